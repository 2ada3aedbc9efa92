"""Everything that talks to other machines, one subsystem per subpackage.

Each subpackage's ``__init__.py`` says which of its files does what, and imports nothing, so a
reader finds a thing from its name and importing one file never drags in its neighbours.

- ``dht/``      the Kademlia DHT (the ``kademlia`` package hosted in trio, hardened by
                subclassing): signed capability records, their storage rules, identity proofs,
                lookups, the crawl, a simulated datagram network for thousands of nodes.
- ``protocol/`` sans-IO: session messages and their codec, the request state machines of both
                ends of a connection, admission of requests.
- ``session/``  trio adapters: the encrypted TCP session, the in-process connection of a node's
                own API, the pool of sessions shared by concurrent requests.
- ``client/``   finding providers of a model, ranking them, streaming from one, failing over.
- ``node/``     the volunteer node: loading models, serving requests on workers, the record it
                publishes, draining on shutdown.
- ``api/``      the OpenAI-compatible HTTP API, the dashboard and ``/metrics``.
- ``cli/``      the ``gpunet`` command, one file per subcommand.

Beside them, one of each shared mechanism: ``errors.py`` (error codes, and how each travels on
the wire and over HTTP), ``settings.py`` (flags > environment > config file > defaults),
``token_bucket.py``, ``bounded_lru.py``, ``host_port.py``, ``model_match.py``; ``metrics.py``
(Prometheus), ``version.py``. The dependency rules between all of these are in
docs/architecture.md and enforced by tests/test_imports.py.
"""
