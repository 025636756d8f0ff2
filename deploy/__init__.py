"""Generated operations config: one deploy file in, nginx/supervisor/systemd/Prometheus out.

A deploy file (TOML, see conf/deploy.example.toml and docs/deploy.md) names
the app, its hosts and ports, paths, user, worker environment, nginx settings
and a ``[server]`` table of server.py options; server.py reads that same file
with ``--config``. Commands (``python -m deploy ...``):

* ``render``: write every generated file (:mod:`deploy.render`);
* ``check``: have nginx, supervisor and systemd judge them, check ports and the
  database's max_connections (:mod:`deploy.check`);
* ``rolling-restart``: restart a host's workers one port at a time without
  failing a request (:mod:`deploy.rolling`).

One module per target: :mod:`deploy.nginx`, :mod:`deploy.supervisor`,
:mod:`deploy.systemd`, :mod:`deploy.prometheus`; the file format is in
:mod:`deploy.config`.
"""
