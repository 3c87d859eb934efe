"""Virtual cluster: N hosts as network namespaces behind tc-shaped Linux bridges.

:mod:`.plan` decides (names, addresses, commands; pure), :mod:`.driver` runs
it (needs root), :mod:`.cli` is ``beo vcluster``.
"""
