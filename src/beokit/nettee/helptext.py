"""The texts of ``nettee -h``, ``-hexamples``, ``-herrors``, ``-hprocess``, ``-i``."""

from __future__ import annotations

from beokit import __version__

USAGE = """\
nettee - a network "tee": pass a data stream down a chain or tree of nodes,
writing it on each node, with every byte count checked.

usage: nettee [options]

Topology
  -root               this node is the root: it connects to its -next children
  -next HOSTLISTS     child hostlists, e.g. node1,[node2,node3] (1-8 lists; a
                      bracketed list is a failover list, see -connf).  HOST may
                      carry :PORT.  '.', ',' or _EOC_ (or no -next): end of chain
  -p, -port PORT      first of two ports: PORT data, PORT+1 control (default 9997)
  -bind ADDR          listen on ADDR only (default: all addresses)    [beokit]
  -flow DIR           push (default) or pull (pull needs -process)

Data
  -in SRC             none | - (stdin) | socket | FILE   (default by -flow/role)
  -out DST            none | - (stdout) | socket | FILE  (default by -flow/role)
                      push: root -in - -out none; other nodes -in none -out -
  -cmd COMMAND        command behind -in socket / -out socket
  -process CMD        process the stream(s) with CMD instead of copying (-hprocess)
  -stm EOS            stream text line by line until the string EOS
  -stm_wait SECONDS   root, -stm: every node reports once the commands its
                      executor (beo exec) ran on the lines have ended, or
                      SECONDS after the end of stream (0 = no limit)  [beokit]
  -stm_results FD     -stm receiver: the executor's results on FD (beo exec
                      passes it); they go up to the root's report    [beokit]

Buffers (memory is bounded by these, whatever the stream size)
  -buf_size N         transfer buffer (pipe) size in bytes (default 1048576)
  -buf_minread N      read only when N bytes are free (default 128)
  -buf_minwrite N     write only when N bytes are stored (default 1)
  -buf_maxread N      at most N bytes per read (default 65536)
  -buf_maxwrite N     at most N bytes per write (default 65536)

Failures (default: any severe error collapses the whole tree)
  -t WAIT             give up if the parent does not connect or send data for
                      WAIT seconds (0 = wait forever, the default)
  -w                  keep trying to reach an unreachable child (booting)
  -connf WAIT         give each host of a hostlist WAIT s to join, then the next;
                      if none joins, drop the branch (NNF)
  -colrf -colwf       continue on local read / local write failure
  -conrf -conwf       continue on network read / network write failure
  -stall SECONDS      a peer silent this long is dead (default 5, 0 = never) [beokit]
  -heal               self-healing: when a node dies or stalls mid-stream, its
                      parent adopts its children and resumes each from the
                      bytes it holds; the dead node is reported      [beokit]
  -window BYTES       -heal replay window kept by each parent (default 16 MiB)
  -fsync              flush the local output to stable storage before this
                      node reports (a failing fsync is LWF)          [beokit]

Security                                                               [beokit]
  NETTEE_SECRET=...   shared secret (environment): peers must prove it (HMAC)
  -secret_file PATH   read the shared secret from PATH instead (never on argv)
  -digest             every node hashes what it wrote (xxh3-128); the root
                      compares each to its own (BDG on a mismatch)   [beokit]

Messages
  -v VERBOSE          bit mask: 1 errors, 2 settings, 4 messages, 8 periodic
                      status, 16 prefix the node name (default 1)
  -log LDST           - (stderr, default) or a file
  -name STRING        node name in messages, 1-127 printable characters
                      (default: the -bind address if given, else $MYHOSTNAME,
                      $HOSTNAME, then gethostname())
  -q                  suppress "ignored signal" messages
  -report FILE        root: write every node's result as JSON (checked
                      writable before anything starts)                [beokit]

Help
  -h -hexamples -herrors -hprocess -i     (-h: also --help; -i: also --version)
"""

EXAMPLES = """\
nettee examples

A linear chain on one switch: the root sends image.bin, every node writes it.
  node3$ nettee -out /scratch/image.bin                     (tip)
  node2$ nettee -next node3 -out /scratch/image.bin         (internal)
  node1$ nettee -next node2 -out /scratch/image.bin         (internal)
  head $ nettee -root -next node1 -in image.bin -v 5        (root)
Nodes may be started in any order: each waits for its parent.

Two switches: fork the tree at the root, one chain per switch.
  head $ nettee -root -next nodeA1,nodeB1 -in image.bin -v 5

Failover: if node2 does not join within 10 s try node3, then node4.
  node1$ nettee -next [node2,node3,node4] -connf 10 -out /scratch/image.bin

A whole tree through tar (read on the root, unpacked everywhere):
  node1$ tar cf - /data | nettee -root -next node2 -v 5
  node2$ nettee -out - | tar xf - -C /

Several nodes on one machine (tests, demos): one loopback address each.
  $ nettee -bind 127.0.0.3 -out /tmp/n3 &
  $ nettee -bind 127.0.0.2 -next 127.0.0.3 -out /tmp/n2 &
  $ nettee -root -next 127.0.0.2 -in big.file -v 5

With a shared secret, nobody without it can join the chain or feed it:
  $ export NETTEE_SECRET="$(cat /etc/beokit/secret)"     (on every node)
  $ nettee -secret_file /etc/beokit/secret ...           (or from a file)

A parallel command executor (-stm): each line runs on every node (beo exec);
with -stm_wait the root reports once every command has ended, naming each
failed command by node and exit status (CMDF), and exits 1:
  node3$ beo exec --name node3
  node2$ beo exec --name node2 --next node3              (NETTEE_SECRET set)
  node1$ printf 'uptime\\nEOS\\n' | nettee -root -next node2 -stm EOS -stm_wait 0
  or, all at once:  beo exec --nodes 'node[2-3]' -- uptime
"""

ERRORS = """\
nettee error status codes

  NONE   no errors
  NWF    network write failure (a child died, stalled or closed)
  LWF    local write failure (disk full, permissions, device error)
  NRF    network read failure (the parent died or stalled, or the stream
         arrived short of the parent's byte count)
  LRF    local read failure (the input could not be read, or the root's
         input file shrank, grew or was rewritten during the stream)
  BBC    child returned incorrect byte count
  BSTAT  child returned unknown or bad status (no report from that node)
  NNF    could not connect to (one or more) child nodes
  SIG    the node was stopped by SIGINT/SIGTERM              [beokit]
  BDG    the node's -digest differs from the root's: it wrote other
         bytes than were sent, with the right count          [beokit]
  CMDF   -stm with beo exec: a command failed on the node (exit status
         or signal), or had not ended when -stm_wait ran out [beokit]

Messages at the node above a failure (and always at the root):
  Failures detected in child 0 [node34]: NWF
  Failures detected in child 1 [node35]: NONE
  Failures detected in chain: NWF
The first names the failures of one child; the second, every failure
anywhere below.  The root also names each failed node and the reason.

Exit status: 0 when the stream completed, even if failures were handled by
-colrf -colwf -conrf -conwf or -connf; 1 when the node was forced to stop
(timeout, write failure, unexpected close) or a node's data cannot be
trusted (BBC, short stream); 2 for bad command line input.
"""

PROCESS = """\
nettee -process CMD: the node's stream is what CMD makes of its inputs

CMD runs under /bin/sh -c on every node that has -process.
  inputs   Each input of the node is a pipe CMD can open by path.  '{}' in
           CMD is replaced by the paths (/dev/fd/N /dev/fd/M ...), which are
           also in $NETTEE_INPUTS ($NETTEE_NINPUTS counts them).  The first
           input is also CMD's stdin.
  order    The tree's streams first (push: the parent's stream; pull: each
           child's stream, in -next order), then the local -in sources.
  output   CMD's stdout is the node's stream: to the children (push) or to
           the parent (pull), and to the local -out.
  failure  CMD exiting non-zero is a local read failure (LRF) of the node.
Every input is fed and counted by nettee, so byte counts are checked as in
the plain tee.  No special command language is needed: standard tools work.

-flow pull: data flows toward the root (the tree still forms from the root
down).  Defaults: root -in none -out -; internal -in none -out -; tip -in -
-out none.  Pull needs -process on every node.

Examples
  merge presorted files held by every node into one sorted stream at the root:
    tip  $ nettee -flow pull -process 'sort -m {}' -in part.sorted
    mid  $ nettee -flow pull -process 'sort -m {}' -next tipA,tipB -in part.sorted -out none
    root $ nettee -root -flow pull -process 'sort -m {}' -next mid -in part.sorted -out all.sorted
  transform the stream on every node of a push chain:
    node $ nettee -process 'tr a-z A-Z' -out copy.txt
    root $ nettee -root -next node -process 'tr a-z A-Z' -in text.txt
"""

VERSION = f"""\
nettee (beokit) {__version__}
A re-implementation of nettee 0.2 (David Mathog, Caltech, 2008), itself
derived from Felix Rauch's dolly (ETH Zurich), in Python with a zero-copy
(splice/tee) byte path, verified delivery and an authenticated chain.
Licence: GPL-2.0-or-later.  No warranty.
"""
