from seepview.core.session import PixelInfo
from seepview.qt.main_window import format_class, format_pixel


def test_status_bar_names_the_predicted_class():
    info = PixelInfo(3, 4, 1234, 255, "unlabeled", predicted=2, predicted_name="seep 2", confidence=0.5)
    assert format_pixel(info) == "x 3  y 4  value 1234"
    assert format_class(info) == "label: unlabeled  model: seep 2 (50%)"
