"""Models: every registered version with its aliases, ONNX parity and metrics; `P` promotes, `A` archives;
`enter` (or `o`) opens one in detail (lineage, gate, parity, signature, deployments: tui/modeldetail.py)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from textual.binding import Binding, BindingType
from textual.widgets import Input

from mlbox.tui.choose import Choose
from mlbox.tui.confirm import Change, Confirm
from mlbox.tui.modeldetail import ModelDetailScreen
from mlbox.tui.screens.base import TableScreen

ALIASES = ("staging", "production")  # the registry's (mlbox.registry.store.ALIASES), without importing it here


def holder(rows: Sequence[Mapping[str, Any]], name: str, alias: str) -> int | None:
    """The version of model `name` that holds `alias` now, from the rows on screen."""
    for r in rows:
        ref = str(r["model"])
        if ref.rpartition(":")[0] == name and alias in str(r["aliases"]).split(","):
            return int(ref.rpartition(":")[2])
    return None


class ModelsScreen(TableScreen):
    """Model versions."""

    TITLE = "models"
    KEY = "model"
    COLUMNS = ("model", "flavor", "task", "aliases", "archived", "onnx_diff", "created_at", "created_by")
    BINDINGS: ClassVar[list[BindingType]] = [
        # `enter` as on Features (or `o`): before the table's own enter, and left to the filter box while typing in it
        Binding("enter,o", "open", "open", id="mlbox.models.open", priority=True),
        Binding("P", "promote", "promote", id="mlbox.models.promote"),
        Binding("A", "archive", "archive", id="mlbox.models.archive"),
    ]

    def load(self) -> list[dict[str, Any]]:
        return self.client.models()

    def show(self, data: list[dict[str, Any]]) -> None:
        self.set_rows(data)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "open":
            if not self.is_mounted or isinstance(self.focused, Input):
                return False  # typing a filter: enter applies it
            return None if self.table.selected() is None else True
        if action in ("promote", "archive"):
            if not self.me.may(f"models {action}"):
                return False
            row = self.table.selected() if self.is_mounted else None
            return None if row is None or row["archived"] else True  # an archived version: nothing to do
        return True

    def on_data_table_row_highlighted(self) -> None:
        self.rebind("open")
        self.rebind("promote")
        self.rebind("archive")

    def action_open(self) -> None:
        row = self.table.selected()
        if row is not None:
            self.app.push_screen(ModelDetailScreen(str(row["model"])))

    def action_promote(self) -> None:
        row = self.table.selected()
        if row is None or row["archived"]:
            return
        ref = str(row["model"])
        name, version = ref.rpartition(":")[0], int(ref.rpartition(":")[2])
        rows = self.table.all_rows
        holders = {alias: holder(rows, name, alias) for alias in ALIASES}
        choices = [(a, f"{a}  (now {f'{name}:{v}' if v is not None else 'unset'})")
                   for a, v in holders.items() if v != version]  # fmt: skip
        if not choices:
            self.notify(f"{ref} already holds every alias", severity="warning")
            return

        def chosen(alias: str | None) -> None:
            if alias is None:
                return
            was = holders[alias]
            change = Change(
                title=f"Promote {ref} to {alias}",
                diff=f"{name}:{alias}  {f'{name}:{was}' if was is not None else 'unset'} → {ref}",
                affects=f"what {name}:{alias} means from now on (new deployments, exports, batch scoring); "
                "running deployments keep the versions they serve",
                command=f"mlbox models promote {ref} --to {alias} --expect {was if was is not None else 'none'}",
            )

            def apply(reason: str | None) -> None:
                if reason is None:
                    return

                def work() -> str:
                    v = self.client.promote_model(ref, alias, was, reason)
                    return f"{v['model']} is now {alias} (aliases: {v['aliases']})"

                self.act(work)

            self.app.push_screen(Confirm(change), apply)

        self.app.push_screen(Choose(f"Promote {ref} to", choices), chosen)

    def action_archive(self) -> None:
        row = self.table.selected()
        if row is None or row["archived"]:
            return
        ref, aliases = str(row["model"]), str(row["aliases"])
        change = Change(
            title=f"Archive {ref}",
            diff=f"{ref}  active{f' ({aliases})' if aliases else ''} → archived",
            affects=(f"{ref} loses {aliases}; " if aliases else "")
            + "it cannot be promoted or newly deployed; deployments serving it keep serving it",
            command=f"mlbox models archive {ref}",
        )

        def apply(reason: str | None) -> None:
            if reason is None:
                return

            def work() -> str:
                v = self.client.archive_model(ref, reason)
                return f"archived {v['model']}"

            self.act(work)

        self.app.push_screen(Confirm(change), apply)
