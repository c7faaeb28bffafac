"""tracefs state (trace-cmd changes it and, on this kernel, cannot restore it)."""

from __future__ import annotations

import os
import re
from pathlib import Path

from bench.harness import log

TRACEFS = Path("/sys/kernel/tracing")
KVM_EVENTS = ("kvm_pio", "kvm_mmio", "kvm_userspace_exit", "kvm_exit", "kvm_entry")


class TracefsState:
    """What trace-cmd may leave changed in tracefs, saved and put back."""

    def __init__(self, root: Path = TRACEFS):
        self.root = root
        self.files = ["tracing_on", "buffer_size_kb", "trace_clock", "set_event_pid", "tracing_cpumask"]
        for ev in KVM_EVENTS:
            self.files += [f"events/kvm/{ev}/enable", f"events/kvm/{ev}/filter"]
        self.saved: dict[str, str] = {}
        self.options: dict[str, bool] = {}
        self.instances: set[str] = set()

    def _read(self, rel: str) -> str | None:
        try:
            return (self.root / rel).read_text()
        except OSError:
            return None

    def _options(self) -> dict[str, bool]:
        text = self._read("trace_options") or ""
        return {o[2:] if o.startswith("no") else o: not o.startswith("no") for o in text.split()}

    def save(self) -> "TracefsState":
        self.saved = {f: v for f in self.files if (v := self._read(f)) is not None}
        self.options = self._options()
        self.instances = set(os.listdir(self.root / "instances")) if (self.root / "instances").is_dir() else set()
        return self

    @staticmethod
    def _value(rel: str, text: str) -> str:
        text = text.strip()
        if rel == "trace_clock":
            m = re.search(r"\[(\S+)\]", text)
            return m.group(1) if m else text
        if rel.endswith("/filter") and text == "none":
            return "0"
        if rel == "buffer_size_kb" and "(" in text:  # "7 (expanded: 1408)"
            m = re.search(r"expanded:\s*(\d+)", text)
            return m.group(1) if m else text.split()[0]
        return text

    @classmethod
    def _unchanged(cls, rel: str, now: str | None, saved: str) -> bool:
        """Whether ``now`` is still the saved state of ``rel``.

        A buffer_size_kb of "7 (expanded: 1408)" means no ring buffer yet: the
        first tracer allocates 1408 KB per CPU and then it reads "1408". That is
        the saved state, not a change; writing the 7 back would leave everyone
        (and the next trace-cmd run, which then overruns) a 7 KB buffer.
        """
        if now == saved:
            return True
        if rel == "buffer_size_kb" and now is not None and "expanded" in saved:
            return now.strip() == cls._value(rel, saved)
        return False

    def diff(self) -> list[str]:
        out = [f for f, v in self.saved.items() if not self._unchanged(f, self._read(f), v)]
        now = self._options()
        out += [f"options/{k}" for k, v in self.options.items() if now.get(k, v) != v]
        if (self.root / "instances").is_dir():
            out += [f"instances/{i}" for i in set(os.listdir(self.root / "instances")) - self.instances]
        return out

    def restore(self) -> list[str]:
        """Put back what changed; return what had changed."""
        changed = self.diff()
        now = self._options()
        for k, v in self.options.items():
            if now.get(k, v) != v:
                self._write(f"options/{k}", "1" if v else "0")
        for f, v in self.saved.items():
            if f == "tracing_on":
                continue
            if not self._unchanged(f, self._read(f), v):
                value = self._value(f, v)
                if f.endswith("set_event_pid") and not value:
                    with open(self.root / f, "w"):  # O_TRUNC clears the list
                        pass
                else:
                    self._write(f, value)
        if (self.root / "instances").is_dir():
            for inst in set(os.listdir(self.root / "instances")) - self.instances:
                try:
                    os.rmdir(self.root / "instances" / inst)
                except OSError:
                    pass
        if "tracing_on" in self.saved and self._read("tracing_on") != self.saved["tracing_on"]:
            self._write("tracing_on", self.saved["tracing_on"].strip())
        return changed

    def _write(self, rel: str, value: str) -> None:
        try:
            (self.root / rel).write_text(value + "\n")
        except OSError as e:
            log(f"warning: could not restore {self.root / rel}: {e}")
