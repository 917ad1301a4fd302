"""Live notebook widgets (ipywidgets 8) for Computes and Clusters.

- :class:`ComputeWidget`: one Compute: state badge, conditions, endpoint, age,
  latest events, a transfer progress bar, and Suspend / Resume / Delete buttons.
- :class:`ClusterDashboard`: a table with one row per Compute, an aggregate
  ``N/M ready`` and actions on all of them.

Both are updated by the Compute's own watch and event stream
(``Compute.subscribe``), never by a polling loop. One Compute has one widget
model (:func:`compute_widget` caches it), so every display of it is a view of
the same model and they stay in sync. The mimebundles carry ``text/plain`` and
``text/html`` renderings of the state as fallbacks for terminals, static
renders and front ends without a widget manager.
"""

from __future__ import annotations

import datetime as _dt
import html
import logging
import weakref
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

import ipywidgets as widgets

from skytorch.client import current_backend
from skytorch.client._sync import run_sync
from skytorch.notebook import lifecycle

if TYPE_CHECKING:  # pragma: no cover
    from skytorch.client import Cluster, Compute
    from skytorch.resources import ComputeResource

logger = logging.getLogger(__name__)

#: Badge colour of each Compute state.
STATE_COLOURS = {
    "Applying": "#6c757d",
    "Pending": "#d98c00",
    "Ready": "#1e8e3e",
    "Suspended": "#6f42c1",
    "Failed": "#d93025",
    "Deleted": "#3c4043",
}
#: Colour of each Kubernetes Event type.
EVENT_COLOURS = {"Normal": "#1e8e3e", "Warning": "#d98c00", "Error": "#d93025"}
#: How many events a widget shows (newest first).
MAX_EVENTS = 8

WIDGET_MIME = "application/vnd.jupyter.widget-view+json"


# --------------------------------------------------------------------------- helpers


def _in_kernel() -> bool:
    return lifecycle._current_kernel() is not None


def human_bytes(n: float | None) -> str:
    """``1536`` -> ``"1.5 KiB"``."""
    if n is None:
        return "?"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"  # pragma: no cover


def human_age(since: _dt.datetime | None, now: _dt.datetime | None = None) -> str:
    """The age of a timestamp as Kubernetes prints it (``42s``, ``5m``, ``3h``, ``2d``)."""
    if since is None:
        return "-"
    now = now or _dt.datetime.now(_dt.timezone.utc)
    if since.tzinfo is None:
        since = since.replace(tzinfo=_dt.timezone.utc)
    seconds = max(0, int((now - since).total_seconds()))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    if seconds < 172800:
        return f"{seconds // 3600}h"
    return f"{seconds // 86400}d"


def _fmt_time(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, _dt.datetime):
        return value.astimezone(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")
    return str(value)


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def badge_html(state: str) -> str:
    """A coloured badge for a state."""
    colour = STATE_COLOURS.get(state, "#6c757d")
    return (
        f'<span class="skytorch-state skytorch-state-{_e(state).lower()}" '
        f'style="background:{colour};color:white;border-radius:8px;padding:1px 8px;'
        f'font-size:0.85em;font-weight:600">{_e(state)}</span>'
    )


#: Icon of each action button (Font Awesome names).
_ICONS = {"suspend": "pause", "resume": "play", "delete": "trash"}
#: States in which a Compute can be suspended.
_SUSPENDABLE = ("Applying", "Pending", "Ready", "Failed")


def _action_buttons(name: str, act: Callable[[str], None], *, icons: bool = True,
                    width: str | None = None) -> list[widgets.Button]:
    """Suspend, Resume and Delete buttons for the Compute ``name``; a click calls ``act(action)``."""
    buttons = []
    for action, icon in _ICONS.items():
        button = widgets.Button(description=action.title(), tooltip=f"{action.title()} {name}",
                                icon=icon if icons else "", button_style="danger" if action == "delete" else "",
                                layout=widgets.Layout(width=width) if width else widgets.Layout())
        button.on_click(lambda _b, action=action: act(action))
        buttons.append(button)
    return buttons


def _enable_actions(buttons: Sequence[widgets.Button], state: str, *, own: bool = True) -> None:
    """Enable the buttons of :func:`_action_buttons` that apply in ``state`` (suspend/resume only ``own``)."""
    suspend, resume, delete = buttons
    suspend.disabled = not own or state not in _SUSPENDABLE
    resume.disabled = not own or state != "Suspended"
    delete.disabled = state == "Deleted"


def _event_field(event: Any, *names: str) -> Any:
    for name in names:
        value = getattr(event, name, None)
        if value is None and isinstance(event, dict):
            value = event.get(name)
        if value not in (None, ""):
            return value
    return None


def event_summary(event: Any) -> dict[str, Any]:
    """The parts of a Kubernetes Event a widget shows: type, reason, message, time, count."""
    return {
        "type": _event_field(event, "type") or "Normal",
        "reason": _event_field(event, "reason") or "",
        "message": _event_field(event, "message", "note") or "",
        "time": _event_field(event, "last_timestamp", "event_time", "first_timestamp", "lastTimestamp", "eventTime"),
        "count": _event_field(event, "count"),
    }


def _events(compute: "Compute") -> list[Any]:
    return list(getattr(compute, "recent_events", None) or [])


def _endpoint(compute: "Compute") -> str:
    endpoint = getattr(compute, "endpoint", None)
    return f"{endpoint[0]}:{endpoint[1]}" if endpoint else "-"


def _namespace(compute: "Compute") -> str:
    return getattr(compute, "namespace", None) or "-"


# --------------------------------------------------------------------------- static renderings


def compute_text(compute: "Compute") -> str:
    """A plain-text rendering of a Compute's state (the ``text/plain`` fallback)."""
    lines = [
        f"Compute {compute.name} [{compute.state}] namespace={_namespace(compute)} "
        f"backend={getattr(compute, 'backend_kind', '?')} image={getattr(compute, 'image', None) or '-'}",
        f"  endpoint: {_endpoint(compute)}   age: {human_age(getattr(compute, 'created_at', None))}",
    ]
    for cond in getattr(compute, "conditions", None) or []:
        lines.append(
            f"  condition {cond.type}={cond.status}"
            + (f" {cond.reason}" if cond.reason else "")
            + (f": {cond.message}" if cond.message else "")
        )
    events = _events(compute)
    for event in reversed(events[-3:]):
        ev = event_summary(event)
        lines.append(f"  event {ev['type']} {ev['reason']}: {ev['message']}")
    return "\n".join(lines)


def _conditions_html(compute: "Compute") -> str:
    if compute.state == "Deleted":
        return '<div style="color:#6c757d">deleted: no conditions</div>'
    conditions = getattr(compute, "conditions", None) or []
    if not conditions:
        return '<div style="color:#6c757d">no conditions reported yet</div>'
    rows = "".join(
        f"<tr><td><b>{_e(c.type)}</b></td><td>{_e(c.status)}</td><td>{_e(c.reason)}</td>"
        f"<td>{_e(c.message)}</td><td>{_e(_fmt_time(c.last_transition_time))}</td></tr>"
        for c in conditions
    )
    return (
        '<table class="skytorch-conditions" style="font-size:0.9em">'
        "<tr><th>Condition</th><th>Status</th><th>Reason</th><th>Message</th><th>Last transition</th></tr>"
        f"{rows}</table>"
    )


def _events_html(compute: "Compute", limit: int = MAX_EVENTS) -> str:
    events = _events(compute)
    if not events:
        return '<div style="color:#6c757d">no events yet</div>'
    items = []
    for event in reversed(events[-limit:]):
        ev = event_summary(event)
        colour = EVENT_COLOURS.get(ev["type"], "#6c757d")
        count = f" (x{ev['count']})" if ev["count"] and ev["count"] != 1 else ""
        items.append(
            f'<li class="skytorch-event"><span style="color:{colour};font-weight:600">{_e(ev["type"])}</span> '
            f"<b>{_e(ev['reason'])}</b>{_e(count)}: {_e(ev['message'])} "
            f'<span style="color:#6c757d">{_e(_fmt_time(ev["time"]))}</span></li>'
        )
    return f'<ul class="skytorch-events" style="margin:0;padding-left:1.2em;font-size:0.9em">{"".join(items)}</ul>'


def _header_html(compute: "Compute") -> str:
    return (
        f'<div class="skytorch-compute-header"><b style="font-size:1.1em">{_e(compute.name)}</b> '
        f"{badge_html(compute.state)} "
        f'<span style="color:#5f6368">namespace <b>{_e(_namespace(compute))}</b> · '
        f"backend <b>{_e(getattr(compute, 'backend_kind', '?'))}</b> · "
        f"image <code>{_e(getattr(compute, 'image', None) or '-')}</code></span></div>"
    )


def _details_html(compute: "Compute") -> str:
    return (
        f'<div class="skytorch-details" style="color:#3c4043">endpoint <code>{_e(_endpoint(compute))}</code> · '
        f"age {_e(human_age(getattr(compute, 'created_at', None)))} · "
        f"ready since {_e(_fmt_time(getattr(compute, 'ready_since', None)))}</div>"
    )


def compute_html(compute: "Compute") -> str:
    """A static HTML rendering of a Compute's state (the ``text/html`` fallback)."""
    return (
        '<div class="skytorch-compute" style="border:1px solid #dadce0;border-radius:6px;padding:6px 10px">'
        f"{_header_html(compute)}{_details_html(compute)}{_conditions_html(compute)}"
        f"<div><b>Events</b> (newest first)</div>{_events_html(compute)}</div>"
    )


def transfer_text(transfer: Any) -> str:
    """``send 1.5 MiB / 4.0 MiB at 12.0 MiB/s``."""
    if transfer is None:
        return ""
    total = getattr(transfer, "bytes_total", None)
    done = getattr(transfer, "bytes_done", 0) or 0
    rate = getattr(transfer, "rate", None)
    parts = [f"{getattr(transfer, 'direction', 'transfer')} {human_bytes(done)}"]
    if total:
        parts.append(f"/ {human_bytes(total)}")
    if rate:
        parts.append(f"at {human_bytes(rate)}/s")
    if getattr(transfer, "done", False):
        parts.append("(done)")
    return " ".join(parts)


# --------------------------------------------------------------------------- Compute widget


class ComputeWidget(widgets.VBox):
    """The live widget of one Compute (use :func:`compute_widget` to get the shared one)."""

    def __init__(self, compute: "Compute", **kwargs: Any) -> None:
        self.compute = compute
        self.header = widgets.HTML()
        self.details = widgets.HTML()
        self.conditions = widgets.HTML()
        self.events = widgets.HTML()
        self.progress = widgets.FloatProgress(min=0.0, max=1.0, value=0.0, description="transfer",
                                              layout=widgets.Layout(width="50%"))
        self.progress_label = widgets.HTML()
        self.progress_box = widgets.HBox([self.progress, self.progress_label],
                                         layout=widgets.Layout(display="none"))
        self.buttons = _action_buttons(compute.name, self.act)
        self.suspend_button, self.resume_button, self.delete_button = self.buttons
        self.message = widgets.HTML()
        buttons = widgets.HBox([*self.buttons, self.message])
        events_box = widgets.VBox([widgets.HTML("<b>Events</b> (newest first)"), self.events])
        super().__init__(
            [self.header, self.details, self.conditions, events_box, self.progress_box, buttons],
            layout=widgets.Layout(border="1px solid #dadce0", padding="4px 8px"),
            **kwargs,
        )
        self.add_class("skytorch-compute-widget")
        self.refresh()
        self._unsubscribe = compute.subscribe(self._on_change)

    def _on_change(self, compute: "Compute", what: str) -> None:
        if what == "transfer":
            self._refresh_transfer()
        elif what == "event":
            self.events.value = _events_html(compute)
        else:
            self.refresh()

    def refresh(self) -> None:
        """Re-render every part from the Compute's current state."""
        compute = self.compute
        self.header.value = _header_html(compute)
        self.details.value = _details_html(compute)
        self.conditions.value = _conditions_html(compute)
        self.events.value = _events_html(compute)
        _enable_actions(self.buttons, compute.state)
        self._refresh_transfer()

    def _refresh_transfer(self) -> None:
        transfer = getattr(self.compute, "transfer", None)
        if transfer is None:
            self.progress_box.layout.display = "none"
            return
        total = getattr(transfer, "bytes_total", None) or 0
        done = getattr(transfer, "bytes_done", 0) or 0
        self.progress.value = min(1.0, done / total) if total else (1.0 if getattr(transfer, "done", False) else 0.0)
        self.progress.bar_style = "success" if getattr(transfer, "done", False) else "info"
        self.progress_label.value = f'<span class="skytorch-transfer">{_e(transfer_text(transfer))}</span>'
        self.progress_box.layout.display = "flex"

    def act(self, action: str) -> None:
        """Run ``suspend``, ``resume`` or ``delete`` on the Compute (what the buttons do)."""
        self.message.value = ""
        try:
            run_sync(getattr(self.compute, action)())
        except Exception as exc:  # shown in the widget: a click has no cell to raise into
            logger.warning("%s of Compute %s failed", action, self.compute.name, exc_info=True)
            self.message.value = f'<span style="color:#d93025">{_e(action)} failed: {_e(exc)}</span>'
        self.refresh()

    def close(self) -> None:
        """Stop following the Compute and close the widget."""
        try:
            self._unsubscribe()
        except Exception:  # pragma: no cover
            pass
        _compute_widgets.pop(id(self.compute), None)
        super().close()


_compute_widgets: dict[int, ComputeWidget] = {}


def compute_widget(compute: "Compute") -> ComputeWidget:
    """The one live widget of ``compute`` (created on first use, then shared by every display)."""
    cached = _compute_widgets.get(id(compute))
    if cached is not None and cached.compute is compute and cached.comm is not None:
        return cached
    widget = ComputeWidget(compute)
    _compute_widgets[id(compute)] = widget
    try:
        weakref.finalize(compute, _compute_widgets.pop, id(compute), None)
    except TypeError:  # pragma: no cover - not weak-referenceable
        pass
    return widget


def _start_watch(compute: "Compute") -> None:
    """Make sure the Compute's watch and event stream run on this loop (they push the widget's updates)."""
    try:
        compute.start_watching()
    except Exception:
        logger.debug("Could not start the watch of %s", compute.name, exc_info=True)


def compute_mimebundle(compute: "Compute", *, widget: bool | None = None, **kwargs: Any) -> dict[str, Any]:
    """The display data of a Compute: a live widget view plus ``text/plain`` and ``text/html`` fallbacks.

    ``widget=None`` includes the widget only inside a Jupyter kernel (a terminal
    gets the text alone); ``True``/``False`` force it.
    """
    data: dict[str, Any] = {"text/plain": compute_text(compute), "text/html": compute_html(compute)}
    if widget is None:
        widget = _in_kernel()
    view = None
    if widget:
        _start_watch(compute)
        view = compute_widget(compute)._repr_mimebundle_(**kwargs)
    return _bundle(data, view, kwargs)


def _bundle(data: dict[str, Any], view: dict[str, Any] | None, kwargs: dict[str, Any]) -> dict[str, Any]:
    """``data`` plus the widget view out of ``view`` (a widget's own bundle), then IPython's include/exclude."""
    if view and WIDGET_MIME in view:
        data[WIDGET_MIME] = view[WIDGET_MIME]
    include, exclude = kwargs.get("include"), kwargs.get("exclude")
    if include:
        data = {k: v for k, v in data.items() if k in include}
    if exclude:
        data = {k: v for k, v in data.items() if k not in exclude}
    return data


# --------------------------------------------------------------------------- dashboard


def _resource_state(resource: "ComputeResource") -> str:
    if resource.metadata.deletion_timestamp:
        return "Deleted"
    if resource.is_suspended:
        return "Suspended"
    if resource.is_ready:
        return "Ready"
    return "Pending"


class _Row(widgets.HBox):
    """One line of the dashboard: a Compute of this kernel, or a listed resource (``all=True``)."""

    CELL_WIDTHS = ("150px", "100px", "170px", "150px", "300px")

    def __init__(self, dashboard: "ClusterDashboard", compute: "Compute | None" = None,
                 resource: "ComputeResource | None" = None) -> None:
        self.dashboard = dashboard
        self.compute = compute
        self.resource = resource
        self.name = compute.name if compute is not None else resource.metadata.name  # type: ignore[union-attr]
        self.cells = [widgets.HTML(layout=widgets.Layout(width=w)) for w in self.CELL_WIDTHS]
        self.endpoint = "-"  # as last shown by refresh(), for the text/plain table
        self.buttons = _action_buttons(self.name, self.act, icons=False, width="90px")
        self.suspend_button, self.resume_button, self.delete_button = self.buttons
        super().__init__(self.cells + self.buttons)
        self.add_class("skytorch-row")
        self.add_class(f"skytorch-row-{self.name}")
        self._unsubscribe: Callable[[], None] | None = None
        if compute is not None:
            self._unsubscribe = compute.subscribe(self._on_change)
        self.refresh()

    @property
    def state(self) -> str:
        """The state shown in this row."""
        if self.compute is not None:
            return self.compute.state
        return _resource_state(self.resource)  # type: ignore[arg-type]

    def _on_change(self, compute: "Compute", what: str) -> None:
        if what == "transfer":
            return
        self.refresh()
        self.dashboard._row_changed(self)

    def refresh(self) -> None:
        """Re-render the cells."""
        state = self.state
        if self.compute is not None:
            ready_since = _fmt_time(getattr(self.compute, "ready_since", None))
            endpoint = _endpoint(self.compute)
            events = _events(self.compute)
            last = event_summary(events[-1]) if events else None
            last_event = f"{last['reason']}: {last['message']}" if last else "-"
        else:
            ready = self.resource.condition("Ready")  # type: ignore[union-attr]
            ready_since = _fmt_time(ready.last_transition_time) if ready and ready.is_true else "-"
            addresses = self.resource.status.addresses  # type: ignore[union-attr]
            endpoint = addresses[0].get("address", "-") if addresses else "-"
            last_event = "(another kernel's Compute)"
        self.endpoint = endpoint
        values = [f"<b>{_e(self.name)}</b>", badge_html(state), _e(ready_since), f"<code>{_e(endpoint)}</code>",
                  f'<span title="{_e(last_event)}">{_e(last_event[:60])}</span>']
        for cell, value in zip(self.cells, values):
            cell.value = value
        _enable_actions(self.buttons, state, own=self.compute is not None)

    def act(self, action: str) -> None:
        """Suspend, resume or delete this row's Compute."""
        try:
            if self.compute is not None:
                run_sync(getattr(self.compute, action)())
            elif action == "delete":
                name = self.name

                async def delete() -> None:
                    await (await current_backend()).delete(name)

                run_sync(delete())
                self.dashboard.remove_row(self.name)
        except Exception as exc:
            logger.warning("%s of Compute %s failed", action, self.name, exc_info=True)
            self.dashboard.message.value = f'<span style="color:#d93025">{_e(action)} {_e(self.name)} failed: {_e(exc)}</span>'
        self.refresh()
        self.dashboard._row_changed(self)

    def detach(self) -> None:
        """Stop following the Compute."""
        if self._unsubscribe is not None:
            try:
                self._unsubscribe()
            except Exception:  # pragma: no cover
                pass
            self._unsubscribe = None


class ClusterDashboard(widgets.VBox):
    """A live table of Computes: one row each, ``N/M ready``, and actions on all.

    ``computes`` are shown and followed; with ``follow_registry`` the kernel's
    new Computes get rows as they are created. A row goes when its Compute is
    deleted.
    """

    HEADERS = ("Compute", "State", "Ready since", "Endpoint", "Last event")

    def __init__(self, computes: Iterable["Compute"] = (), *, resources: Iterable["ComputeResource"] = (),
                 follow_registry: bool = False, title: str = "SkyTorch Computes") -> None:
        self.title = title
        self.summary = widgets.HTML()
        self.message = widgets.HTML()
        self.rows: dict[str, _Row] = {}
        self.table = widgets.VBox()
        header = widgets.HBox([widgets.HTML(f"<b>{h}</b>", layout=widgets.Layout(width=w))
                               for h, w in zip(self.HEADERS, _Row.CELL_WIDTHS)])
        self.suspend_all = widgets.Button(description="Suspend all", icon="pause")
        self.resume_all = widgets.Button(description="Resume all", icon="play")
        self.delete_all = widgets.Button(description="Delete all", icon="trash", button_style="danger")
        self.suspend_all.on_click(lambda _b: self.act_all("suspend"))
        self.resume_all.on_click(lambda _b: self.act_all("resume"))
        self.delete_all.on_click(lambda _b: self.act_all("delete"))
        super().__init__(
            [self.summary, widgets.HBox([self.suspend_all, self.resume_all, self.delete_all, self.message]),
             header, self.table],
            layout=widgets.Layout(border="1px solid #dadce0", padding="4px 8px"),
        )
        self.add_class("skytorch-dashboard")
        self._remove_listener: Callable[[], None] | None = None
        for compute in computes:
            self.add_compute(compute, update=False)
        for resource in resources:
            if resource.metadata.name not in self.rows:
                self._add_row(_Row(self, resource=resource), update=False)
        if follow_registry:
            self._remove_listener = lifecycle.registry().add_listener(self._on_registry)
        self._update()

    # rows -----------------------------------------------------------------
    def add_compute(self, compute: "Compute", *, update: bool = True) -> None:
        """Show a row for ``compute`` (replacing a row of the same name)."""
        if compute.state == "Deleted":
            return
        self.remove_row(compute.name, update=False)
        self._add_row(_Row(self, compute=compute), update=update)

    def _add_row(self, row: _Row, *, update: bool = True) -> None:
        self.rows[row.name] = row
        if update:
            self._update()

    def remove_row(self, name: str, *, update: bool = True) -> None:
        """Drop the row of that Compute."""
        row = self.rows.pop(name, None)
        if row is not None:
            row.detach()
            row.close()
        if update:
            self._update()

    def _on_registry(self, compute: "Compute", what: str) -> None:
        if what == "added":
            self.add_compute(compute)
        elif what == "removed":
            row = self.rows.get(compute.name)
            if row is not None and row.compute is compute:
                self.remove_row(compute.name)

    def _row_changed(self, row: _Row) -> None:
        if row.state == "Deleted" and self.rows.get(row.name) is row:
            self.remove_row(row.name)
        else:
            self._update()

    # rendering ---------------------------------------------------------------
    @property
    def ready_count(self) -> tuple[int, int]:
        """(ready, total) over the rows."""
        states = [row.state for row in self.rows.values()]
        return sum(1 for s in states if s == "Ready"), len(states)

    def summary_text(self) -> str:
        """``"2/3 ready"``."""
        ready, total = self.ready_count
        return f"{ready}/{total} ready"

    def _update(self) -> None:
        self.table.children = tuple(self.rows.values())
        ready, total = self.ready_count
        colour = STATE_COLOURS["Ready"] if total and ready == total else STATE_COLOURS["Pending"]
        self.summary.value = (
            f'<span style="font-size:1.1em"><b>{_e(self.title)}</b> · '
            f'<span class="skytorch-summary" style="color:{colour};font-weight:600">{_e(self.summary_text())}</span></span>'
        )

    def text(self) -> str:
        """A plain-text table (the ``text/plain`` fallback)."""
        lines = [f"{self.title}: {self.summary_text()}"]
        for row in self.rows.values():
            lines.append(f"  {row.name:<30} {row.state:<10} {row.endpoint}")
        return "\n".join(lines)

    def html(self) -> str:
        """A static HTML table (the ``text/html`` fallback)."""
        head = "".join(f"<th>{h}</th>" for h in self.HEADERS)
        body = "".join("<tr>" + "".join(f"<td>{c.value}</td>" for c in row.cells) + "</tr>" for row in self.rows.values())
        return (f'<div class="skytorch-dashboard"><b>{_e(self.title)}</b> · '
                f"<b>{_e(self.summary_text())}</b><table><tr>{head}</tr>{body}</table></div>")

    # actions -----------------------------------------------------------------
    def act_all(self, action: str) -> None:
        """Suspend, resume or delete every Compute in the table."""
        self.message.value = ""
        for row in list(self.rows.values()):
            if action != "delete" and row.compute is None:
                continue
            row.act(action)

    def close(self) -> None:
        """Stop following the Computes and close the widget."""
        if self._remove_listener is not None:
            self._remove_listener()
            self._remove_listener = None
        for row in list(self.rows.values()):
            row.detach()
        super().close()

    def mimebundle(self, *, widget: bool = True, **kwargs: Any) -> dict[str, Any]:
        """Display data: the widget view plus ``text/plain`` and ``text/html``."""
        data: dict[str, Any] = {"text/plain": self.text(), "text/html": self.html()}
        return _bundle(data, super()._repr_mimebundle_(**kwargs) if widget else None, kwargs)

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        return self.mimebundle(**kwargs)


def cluster_mimebundle(cluster: "Cluster | Sequence[Compute]", *, widget: bool | None = None,
                       **kwargs: Any) -> dict[str, Any]:
    """The display data of a Cluster: a live dashboard plus ``text/plain`` and ``text/html`` fallbacks."""
    computes = list(cluster)
    if widget is None:
        widget = _in_kernel()
    if widget:
        for compute in computes:
            _start_watch(compute)
    board = ClusterDashboard(computes, title=f"Cluster of {len(computes)}")
    data = board.mimebundle(widget=bool(widget), **kwargs)
    if not widget:
        board.close()
    return data


def dashboard(all: bool = False) -> ClusterDashboard:  # noqa: A002 - the issue names the flag ``all``
    """A live dashboard of this kernel's Computes (``all=True``: every Compute of the namespace).

    Rows of this kernel's Computes appear and go as they are created and
    deleted; with ``all=True`` the other Computes of the namespace are listed
    once, when the dashboard is made.
    """
    own = lifecycle.registry().computes()
    for compute in own:
        _start_watch(compute)
    resources: list[Any] = []
    if all:
        async def listing() -> list[Any]:
            return await (await current_backend()).list()

        resources = run_sync(listing())
    title = "All SkyTorch Computes" if all else "This kernel's Computes"
    return ClusterDashboard(own, resources=resources, follow_registry=True, title=title)
