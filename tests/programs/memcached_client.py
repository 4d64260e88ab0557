"""A memcached text-protocol client: 500 set/get pairs of growing random
values; prints how many came back intact."""
import json
import os
import socket
import sys

s = socket.create_connection((sys.argv[1], int(sys.argv[2])))
f = s.makefile("rb")
ok = 0
for i in range(500):
    val = os.urandom(100 + i * 37)
    s.sendall(b"set k%d 0 0 %d\r\n" % (i, len(val)) + val + b"\r\n")
    assert f.readline() == b"STORED\r\n"
    s.sendall(b"get k%d\r\n" % i)
    hdr = f.readline().split()
    data = f.read(int(hdr[3]) + 2)[:-2]
    assert f.readline() == b"END\r\n"
    ok += data == val
print(json.dumps({"ok": ok}))
