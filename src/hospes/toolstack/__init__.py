"""The toolstack: xl.cfg parsing, the ``hospesd`` node daemon, its HTTP API and clients.

Process model (docs/toolstack.md has the whole picture)::

    hospes CLI / Python API --HTTP over a Unix socket--> hospesd (daemon.py, api.py)
    hospesd --one JSON line per request over <run>/domains/<id>.sock--> domain process
    domain process (domain_process.py) = one Domain in its main thread

The runtime directory (``$HOSPES_RUN_DIR``, else ``/run/hospes``) holds all shared
state, so a restarted daemon finds the running domains again by scanning it.
"""
