"""What every footprint format is made from: the lots, their steps, the declared unit, the
reference period and the totals — checked once, before any format is written."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

from edge_agent.errors import FootprintError
from edge_agent.footprint.decimals import divide
from edge_agent.footprint.info import DeclaredUnit, FootprintInfo, ProductInfo
from edge_agent.footprint.quality import RatedInput
from edge_agent.footprint.records import LotRecord, StepRecord, parse_lot, steps_of_lot

__all__ = ["FootprintBasis", "LotBasis", "LotWithOrders", "lot_basis", "product_basis"]

# A lot record and the order records of its steps, as published (JSON objects).
LotWithOrders = tuple[Mapping[str, Any], Sequence[Mapping[str, Any]]]


@dataclass(frozen=True, slots=True)
class LotBasis:
    """A lot checked for a footprint: complete, with a product, a period and good quantity."""

    lot: LotRecord
    steps: tuple[StepRecord, ...]
    product_id: str
    quantity: Decimal  # good quantity, > 0
    start: datetime
    end: datetime

    def rated_inputs(self) -> tuple[RatedInput, ...]:
        """The factors behind the lot's CO2e with their steps' activity quality: the steps'
        own when every step has its order record, else the lot's summary list."""
        if self.steps and all(step.factors for step in self.steps):
            return tuple(
                RatedInput(factor, step.measured_share, step.coverage)
                for step in self.steps
                for factor in step.factors
            )
        return tuple(
            RatedInput(factor, self.lot.measured_share, self.lot.coverage)
            for factor in self.lot.factors
        )


@dataclass(frozen=True, slots=True)
class FootprintBasis:
    kind: Literal["lot", "product"]
    site_id: str
    product_id: str
    product: ProductInfo
    record_unit: str  # the records' quantity unit ("piece")
    declared: DeclaredUnit
    lots: tuple[LotBasis, ...]
    period_start: datetime
    period_end: datetime
    quantity: Decimal  # good quantity in the records' unit, > 0
    co2e_kg: Decimal
    energy_kwh: Decimal
    primary_data_share: Decimal  # 0..1, CO2e-weighted over the lots
    inputs: tuple[RatedInput, ...]
    identity: tuple[str, ...]  # what the footprint id is derived from (with format, version)

    @property
    def declared_quantity(self) -> Decimal:
        """The good quantity in PACT declared units."""
        return self.quantity * self.declared.amount

    @property
    def co2e_per_declared_unit(self) -> Decimal:
        return divide(self.co2e_kg, self.declared_quantity)

    @property
    def subject(self) -> str:
        """The lot or the product and period, for messages."""
        if self.kind == "lot":
            return f"lot {self.lots[0].lot.lot_id}"
        return f"product {self.product_id}"


def _checked_lot(payload: Mapping[str, Any], orders: Sequence[Mapping[str, Any]]) -> LotBasis:
    lot = parse_lot(payload)
    if lot.incomplete or lot.open_steps > 0:
        raise FootprintError(
            f"lot {lot.lot_id}: incomplete, {lot.open_steps} step(s) not final yet "
            f"(revision {lot.revision}; a later revision completes it)"
        )
    if lot.quantity_good is None or lot.quantity_good <= 0:
        raise FootprintError(
            f"lot {lot.lot_id}: no good quantity (quantity_good {lot.quantity_good}), "
            "so there is no footprint per unit of product"
        )
    if lot.start is None or lot.end is None:
        raise FootprintError(f"lot {lot.lot_id}: no start or end (no finished step)")
    if lot.product_id is None:
        raise FootprintError(f"lot {lot.lot_id}: no product_id (the MES start event gives it)")
    return LotBasis(
        lot, steps_of_lot(lot, orders), lot.product_id, lot.quantity_good, lot.start, lot.end
    )


def _product(info: FootprintInfo, product_id: str, lot_id: str) -> ProductInfo:
    product = info.products.get(product_id)
    if product is None:
        raise FootprintError(
            f"lot {lot_id}: product {product_id!r} has no product information "
            f"(footprint.products.{product_id}: name, description, ...)"
        )
    return product


def _declared(info: FootprintInfo, unit: str, lot_id: str) -> DeclaredUnit:
    declared = info.declared_units.get(unit)
    if declared is None:
        raise FootprintError(
            f"lot {lot_id}: quantity unit {unit!r} has no PACT declared unit "
            f"(footprint.declared_units.{unit}; known: {', '.join(sorted(info.declared_units))})"
        )
    return declared


def lot_basis(
    lot_record: Mapping[str, Any], order_records: Sequence[Mapping[str, Any]], info: FootprintInfo
) -> FootprintBasis:
    """One lot: its good quantity, CO2e and steps, over [lot start, lot end)."""
    checked = _checked_lot(lot_record, order_records)
    lot = checked.lot
    return FootprintBasis(
        kind="lot",
        site_id=lot.site_id,
        product_id=checked.product_id,
        product=_product(info, checked.product_id, lot.lot_id),
        record_unit=lot.unit,
        declared=_declared(info, lot.unit, lot.lot_id),
        lots=(checked,),
        period_start=checked.start,
        period_end=checked.end,
        quantity=checked.quantity,
        co2e_kg=lot.co2e_kg,
        energy_kwh=lot.energy_kwh,
        primary_data_share=lot.primary_data_share,
        inputs=checked.rated_inputs(),
        identity=("lot", lot.site_id, lot.lot_id),
    )


def product_basis(
    lots_with_orders: Sequence[LotWithOrders],
    info: FootprintInfo,
    period_start: datetime,
    period_end: datetime,
) -> FootprintBasis:
    """The lots of one product over a period: total CO2e over total good quantity (the
    quantity-weighted mean of the lots' intensities), primary data share weighted by CO2e.
    The reference period is [period_start, period_end), widened to the first lot's start
    when a lot began before it (PACT: the earliest activity data)."""
    if period_end <= period_start:
        raise FootprintError(f"the period {period_start} .. {period_end} is empty")
    if not lots_with_orders:
        raise FootprintError("no lot to make a product footprint from")
    checked = [_checked_lot(lot, orders) for lot, orders in lots_with_orders]
    first = checked[0].lot
    product_id = checked[0].product_id
    for item in checked[1:]:
        lot = item.lot
        for name, value, expected in (
            ("product", item.product_id, product_id),
            ("site", lot.site_id, first.site_id),
            ("quantity unit", lot.unit, first.unit),
        ):
            if value != expected:
                raise FootprintError(
                    f"lot {lot.lot_id}: {name} {value!r} differs from lot {first.lot_id}'s "
                    f"{expected!r}: a product footprint adds lots of one product, site and unit"
                )
    lots = sorted(checked, key=lambda item: (item.end, item.lot.lot_id))
    quantity = sum((item.quantity for item in lots), Decimal(0))
    co2e = sum((item.lot.co2e_kg for item in lots), Decimal(0))
    if co2e > 0:
        weighted = sum((i.lot.primary_data_share * i.lot.co2e_kg for i in lots), Decimal(0))
        primary = divide(weighted, co2e)
    else:  # nothing emitted: the shares by quantity
        weighted = sum((i.lot.primary_data_share * i.quantity for i in lots), Decimal(0))
        primary = divide(weighted, quantity)
    return FootprintBasis(
        kind="product",
        site_id=first.site_id,
        product_id=product_id,
        product=_product(info, product_id, first.lot_id),
        record_unit=first.unit,
        declared=_declared(info, first.unit, first.lot_id),
        lots=tuple(lots),
        period_start=min([period_start, *(item.start for item in lots)]),
        period_end=max([period_end, *(item.end for item in lots)]),
        quantity=quantity,
        co2e_kg=co2e,
        energy_kwh=sum((item.lot.energy_kwh for item in lots), Decimal(0)),
        primary_data_share=primary,
        inputs=tuple(rated for item in lots for rated in item.rated_inputs()),
        identity=(
            "product",
            first.site_id,
            product_id,
            period_start.isoformat(),
            period_end.isoformat(),
            *sorted(f"{item.lot.record_id}@{item.lot.revision}" for item in lots),
        ),
    )
