"""``beo run``: the tree launcher (scaleboot rebuilt).

``plan`` is pure logic (splitting, schedules, wire messages, gathering),
``backends`` builds remote-command argv (ssh, rsh, exec, template),
``agent`` is the process that runs on every node (with ``listen``, where its
children call back, and ``leaf``, hosts run without an agent), ``ship`` the
zipapp of all that, ``cli`` the command.  The agent side imports only the
standard library and beokit's shared ``errors``, ``framing``, ``net`` and
``proc``, so that the launcher can ship itself as a small zipapp to nodes
where beokit is not installed.
"""
