"""Fresh request ids: the shape of a uuid4 hex, unique without a system call per request, and
saying nothing of the traffic between two of them."""

from __future__ import annotations


def test_new_request_ids_are_32_hex_digits_and_unique_across_a_fork() -> None:
    import os
    import re

    from resserve.server.middleware.request_id import new_request_id

    ids = {new_request_id() for _ in range(1000)}
    assert len(ids) == 1000 and all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child reports through the pipe
        os.write(write, new_request_id().encode())
        os._exit(0)
    os.waitpid(child, 0)
    theirs = os.read(read, 64).decode()
    os.close(read)
    os.close(write)
    assert theirs != new_request_id()
    # consecutive ids share nothing that counts the traffic between them
    first, second = new_request_id(), new_request_id()
    assert first[:16] != second[:16]
