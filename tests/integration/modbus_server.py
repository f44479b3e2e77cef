"""Small in-process Modbus servers for adapter tests (real pymodbus on 127.0.0.1, free ports).

``MeterServer`` holds a register image filled with :func:`encode_value` from point values and
answers like a meter: registers outside the defined ranges give exception 2, other unit ids are
either answered with a gateway exception (0x0B), or ignored (silence), as a Modbus TCP gateway
with a missing meter behind it would. ``silent`` makes the meter hang (connection stays open).

``RawServer`` is a plain asyncio TCP server with a scripted reply, for what no Modbus server
does on purpose: never answer, answer with another transaction id, close on every request.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Awaitable, Callable, Mapping
from typing import Literal

from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from edge_agent.config.models import ModbusPoint
from edge_agent.sources.modbus.decode import encode_value

HOST = "127.0.0.1"
MissingUnit = Literal["gateway_exception", "silent"]
_READ_TABLE = {3: "holding", 4: "input"}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


class MeterServer:
    """One meter (unit ``unit_id``) behind a Modbus TCP server, or on an RTU serial port."""

    def __init__(
        self,
        points: Mapping[str, ModbusPoint],
        values: Mapping[str, float],
        *,
        unit_id: int = 1,
        port: int | None = None,
        missing_unit: MissingUnit = "gateway_exception",
        serial_port: str | None = None,
        baudrate: int = 9600,
    ) -> None:
        self.points = dict(points)
        self.unit_id = unit_id
        self.port = port if port is not None else free_port()
        self.serial_port = serial_port
        self.baudrate = baudrate
        self.missing_unit = missing_unit
        self.silent = False
        self.requests = 0  # requests that reached this meter's unit id
        self.image: dict[str, dict[int, int]] = {"holding": {}, "input": {}}
        self.bits: dict[str, dict[int, bool]] = {"coil": {}, "discrete_input": {}}
        for name, value in values.items():
            self.set_value(name, value)
        self._server: ModbusTcpServer | ModbusSerialServer | None = None
        self._stopped = asyncio.Event()

    def set_value(self, name: str, value: float) -> None:
        point = self.points[name]
        if point.register_type in ("coil", "discrete_input"):
            self.bits[point.register_type][point.address] = bool(value)
            return
        for offset, word in enumerate(encode_value(value, point)):
            self.image[point.register_type][point.address + offset] = word

    def set_words(self, table: str, address: int, words: list[int]) -> None:
        """Write raw words (e.g. a NaN pattern no encoder would produce)."""
        for offset, word in enumerate(words):
            self.image[table][address + offset] = word

    def _table(self, table: str) -> list[SimData]:
        addresses = sorted(self.image[table])
        if not addresses:
            return [SimData(60000, count=1, values=0, datatype=DataType.REGISTERS)]
        # One contiguous range per run of defined addresses: gaps answer exception 2.
        blocks: list[SimData] = []
        first = previous = addresses[0]
        for address in [*addresses[1:], None]:
            if address is not None and address == previous + 1:
                previous = address
                continue
            blocks.append(
                SimData(first, count=previous - first + 1, values=0, datatype=DataType.REGISTERS)
            )
            if address is not None:
                first = previous = address
        return blocks

    def _bit_table(self, table: str) -> list[SimData]:
        bits = self.bits[table]
        if not bits:
            return [SimData(60000, count=1, values=False, datatype=DataType.BITS)]
        first, last = min(bits), max(bits)
        values = [bits.get(address, False) for address in range(first, last + 1)]
        return [SimData(first, values=values, datatype=DataType.BITS)]

    async def _on_request(
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        self.requests += 1
        while self.silent and self._server is not None:  # noqa: ASYNC110 (a plain flag flipped by the test)
            await asyncio.sleep(0.02)
        table = _READ_TABLE.get(function_code)
        if table is not None:
            for index in range(len(registers)):
                registers[index] = self.image[table].get(start_address + index, 0)
        return None

    async def _missing_unit(self, *_args: object) -> ExcCodes | None:
        if self.missing_unit == "silent":
            await self._stopped.wait()  # the gateway never answers for this unit
        return ExcCodes.GATEWAY_NO_RESPONSE

    def _devices(self) -> list[SimDevice]:
        meter = SimDevice(
            id=self.unit_id,
            simdata=(
                self._bit_table("coil"),
                self._bit_table("discrete_input"),
                self._table("holding"),
                self._table("input"),
            ),
            action=self._on_request,
        )
        # id=0 stands for every other unit id (pymodbus SimDevice docs).
        other = SimDevice(
            id=0,
            simdata=(
                [SimData(0, count=16, values=False, datatype=DataType.BITS)],
                [SimData(0, count=16, values=False, datatype=DataType.BITS)],
                [SimData(0, count=65535, values=0, datatype=DataType.REGISTERS)],
                [SimData(0, count=65535, values=0, datatype=DataType.REGISTERS)],
            ),
            action=self._missing_unit,
        )
        return [meter, other]

    async def start(self) -> None:
        if self._server is not None:
            return
        self._stopped = asyncio.Event()
        if self.serial_port is not None:
            self._server = ModbusSerialServer(
                context=self._devices(), port=self.serial_port, baudrate=self.baudrate
            )
        else:
            self._server = ModbusTcpServer(context=self._devices(), address=(HOST, self.port))
        await self._server.serve_forever(background=True)

    async def stop(self) -> None:
        server, self._server = self._server, None
        self._stopped.set()  # release hung requests so the server can shut down
        if server is not None:
            with contextlib.suppress(Exception):
                await server.shutdown()  # type: ignore[no-untyped-call]

    async def __aenter__(self) -> MeterServer:
        await self.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        self.silent = False
        await self.stop()


Reply = Callable[[bytes], bytes | None]


class RawServer:
    """A TCP server that feeds every request to ``reply``: bytes to send, or None to close.

    ``reply=lambda _: b""`` accepts and never answers (a hung gateway).
    """

    def __init__(self, reply: Reply) -> None:
        self.reply = reply
        self.port = free_port()
        self.connections = 0
        self._server: asyncio.Server | None = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while request := await reader.read(260):
                answer = self.reply(request)
                if answer is None:
                    break
                if answer:
                    writer.write(answer)
                    await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def __aenter__(self) -> RawServer:
        handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
        handler = self._handle
        self._server = await asyncio.start_server(handler, HOST, self.port)
        return self

    async def __aexit__(self, *_exc: object) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
