import pickle

from seepview.core.errors import ImageReadError, SeepviewError


def test_message_names_file_and_reason(tmp_path):
    err = ImageReadError(tmp_path / "a.tif", "not a TIFF")
    assert str(err) == f"{tmp_path / 'a.tif'}: not a TIFF"
    assert isinstance(err, SeepviewError)


def test_non_utf8_name_is_printable():
    err = SeepviewError(b"/tmp/\xff\xfe.tif".decode("utf-8", "surrogateescape"), "bad")
    text = str(err)
    text.encode("utf-8")  # must not raise
    assert text.endswith(": bad")


def test_pickles_for_worker_processes():
    err = pickle.loads(pickle.dumps(ImageReadError("x.tif", "truncated")))
    assert isinstance(err, ImageReadError) and err.reason == "truncated"
