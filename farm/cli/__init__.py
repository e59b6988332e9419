"""The ``farm`` command (click + rich): one module per group of commands, the API client, and
what the terminal shows. The CLI talks to a farm server over HTTP, or runs the embedded farm."""
