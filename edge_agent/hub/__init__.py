"""The plant hub: records of every gateway from the broker into PACT 3.0 footprints, served to
customers over the PACT API (issue 11). ``edge-agent hub``.

    model.py   typed values and the store interface every part codes against
    config.py  the hub's configuration file
    store/     the hub's database (SQLite or PostgreSQL, one data-access layer)
    api/       the PACT 3.0 host API (HTTPS, OAuth 2 client credentials)
    ingest.py  the MQTT 5 shared-subscription consumer
    assemble.py  lots and products from records into footprints (edge_agent.footprint)
"""
