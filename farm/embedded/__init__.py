"""The embedded farm: ``farm render``, ``farm comp`` and ``farm train`` with no server configured
run the server's own scheduler in the CLI's process, on this machine's store."""
