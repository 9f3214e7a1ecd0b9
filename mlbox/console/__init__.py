"""The console: what an operator reads and changes on a box, as one acting user, for the TUI and the management API.

`Console(box, actor)` holds every read and change (mlbox/console/service.py); the TUI reaches it on this
machine through `LocalClient`, or from another machine through `mlbox serve`'s management routes
(mlbox/api/manage.py) and `RemoteClient`. The records it returns (mlbox/console/records.py) are plain
data that cross HTTP as JSON and come back equal.
"""
