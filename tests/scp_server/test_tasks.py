"""The queue the node and its workers share."""

import sys

import pytest
from huey import RedisHuey, SqliteHuey

from scp_server.config import NodeSettings
from scp_server.tasks import make_queue


def test_the_embedded_queue_lives_in_the_spool(tmp_path):
    queue = make_queue(NodeSettings(spool_dir=tmp_path / "spool"))
    assert isinstance(queue, SqliteHuey)
    assert (tmp_path / "spool" / "queue.sqlite3").is_file()


def test_the_redis_queue_is_configuration_only(tmp_path):
    settings = NodeSettings(
        spool_dir=tmp_path, queue={"backend": "redis", "redis_url": "redis://127.0.0.1:1/0"}
    )
    assert isinstance(make_queue(settings), RedisHuey)  # connects lazily


def test_redis_backend_without_the_client_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "redis", None)  # as if not installed
    settings = NodeSettings(spool_dir=tmp_path, queue={"backend": "redis"})
    with pytest.raises(ValueError, match=r"pip install 'n2d-dicom\[redis\]'"):
        make_queue(settings)


def test_a_run_error_is_one_line_even_when_the_library_put_a_traceback_in_its_message():
    """Round 3, finding 5: pydicom's write error carried a whole traceback into the run's error field."""
    from scp_server.tasks import error_line

    message = "With tag (0008,103E) got exception: a bytes-like object is required\nTraceback (most recent..."
    line = error_line(TypeError(message))
    assert line == "TypeError: With tag (0008,103E) got exception: a bytes-like object is required"
    assert error_line(ValueError("")) == "ValueError: "
