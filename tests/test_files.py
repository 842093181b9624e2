"""peftds.files: atomic writes."""

from __future__ import annotations

import threading

from peftds.files import write_text_atomic


def test_two_threads_writing_one_file_never_collide(tmp_path):
    target = tmp_path / "table.md"
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def writer(tag: str) -> None:
        start.wait()
        try:
            for i in range(300):
                write_text_atomic(target, f"{tag} {i}\n" * 200)
        except BaseException as e:  # a shared temp name: the other thread's replace took it away
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(t,)) for t in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    lines = target.read_text().splitlines()
    assert len(lines) == 200 and len(set(lines)) == 1  # one writer's whole text, never a mix
    assert [p.name for p in tmp_path.iterdir()] == ["table.md"]  # no temporary file left behind
