"""Results out of the app: GeoTIFF class masks, region vectors (GeoPackage/GeoJSON) and reports.

The one home of export logic for the CLI (``seepview export``) and the GUI's File → Export….
rasterio, shapely and pyogrio are imported only inside the functions that use them, so importing
this package costs nothing until an export runs. See ``pipeline`` for the order of work.
"""

from seepview.core.export.pipeline import SOURCES, ExportOptions, ExportResult, export_project, resolve_model

__all__ = ["SOURCES", "ExportOptions", "ExportResult", "export_project", "resolve_model"]
