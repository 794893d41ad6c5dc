"""The toolstack: xl.cfg parsing, the ``hospesd`` node daemon, its HTTP API and clients.

Process model (docs/toolstack.md has the whole picture)::

    hospes CLI / Python API --HTTP over a Unix socket--> hospesd (daemon.py, api.py)
    hospesd --one JSON line per request over <run>/domains/<id>.sock--> domain process
    domain process (domain_process.py) = one Domain in its main thread

Configuration takes one path (docs/toolstack.md, "One configuration path"):
xl.cfg text, API bodies and ``hospes run`` flags become a ``spec.DomainSpec``, and
``domain_config.domain_config`` turns it into the hypervisor's ``DomainConfig``;
``runner.DomainRunner`` runs it through its restarts, for ``hospes run`` and the
domain processes alike.

The runtime directory (``$HOSPES_RUN_DIR``, else ``/run/hospes``) holds all shared
state, so a restarted daemon finds the running domains again by scanning it.
"""
