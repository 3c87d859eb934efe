"""``beo run``: the tree launcher (scaleboot rebuilt).

``plan`` is pure logic (splitting, schedules, wire messages, gathering),
``backends`` builds remote-command argv (ssh, rsh, exec, template),
``agent`` is the process that runs on every node, ``cli`` the command.
The agent side imports only the standard library, so that the launcher can
ship itself as a small zipapp to nodes where beokit is not installed.
"""
