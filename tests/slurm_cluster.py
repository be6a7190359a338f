"""A one-node Slurm cluster on this machine for the tests (Debian packages slurm-wlm and munge).

``start_cluster(folder)`` writes a munge key and a ``slurm.conf`` for this host (no cgroups, no
accounting: proctrack/linuxproc, task/none), starts munged, slurmctld and slurmd as the current
user on free ports, waits until the node is idle and returns a ``Cluster`` whose ``env`` points
Slurm's commands (and submitit's calls of them) at it; ``stop()`` ends the three daemons it started.
Anything that keeps the daemons from starting raises ``ClusterUnavailable`` with the reason, which
the fixture turns into a skip.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "scancel", "sinfo", "srun")


class ClusterUnavailable(Exception):
    """The daemons cannot run here; the message says why."""


@dataclass
class Cluster:
    folder: Path
    conf: Path
    env: dict[str, str]
    processes: list[subprocess.Popen] = field(default_factory=list)

    def stop(self) -> None:
        # slurmd, slurmctld, then munged: each by the id this module started it with.
        for process in reversed(self.processes):
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-2000:]}" for p in sorted(self.folder.glob("*.log")))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _binary(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if not found:
        raise ClusterUnavailable(f"{name} not installed (Debian: apt-get install slurm-wlm munge)")
    return found


def start_cluster(folder: Path, timeout: float = 60) -> Cluster:
    binaries = {name: _binary(name) for name in (*DAEMONS, *CLIENTS)}
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)  # munged refuses a key or socket in a folder others can write
    host = socket.gethostname().split(".")[0]
    user = subprocess.run(["id", "-un"], capture_output=True, text=True, check=True).stdout.strip()
    key = folder / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    munge_socket = folder / "munge.socket"
    for sub in ("state", "spool"):
        (folder / sub).mkdir(exist_ok=True)
    cpus = os.cpu_count() or 1
    conf = folder / "slurm.conf"
    conf.write_text("\n".join([
        "ClusterName=relbenchtest",
        f"SlurmctldHost={host}(127.0.0.1)",
        f"SlurmctldPort={_free_port()}",
        f"SlurmdPort={_free_port()}",
        f"SlurmUser={user}",
        f"SlurmdUser={user}",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        f"AuthInfo=socket={munge_socket}",
        f"StateSaveLocation={folder / 'state'}",
        f"SlurmdSpoolDir={folder / 'spool'}",
        f"SlurmctldPidFile={folder / 'slurmctld.pid'}",
        f"SlurmdPidFile={folder / 'slurmd.pid'}",
        f"SlurmctldLogFile={folder / 'slurmctld.log'}",
        f"SlurmdLogFile={folder / 'slurmd.log'}",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_CPU",
        "MpiDefault=none",
        "ReturnToService=2",
        "SchedulerType=sched/backfill",
        "SlurmctldTimeout=30",
        "SlurmdTimeout=30",
        "InactiveLimit=0",
        "KillWait=5",
        "MinJobAge=300",
        f"NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} State=UNKNOWN",
        f"PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP",
        "",
    ]))
    env = {**os.environ, "SLURM_CONF": str(conf)}
    cluster = Cluster(folder, conf, env)

    def launch(argv: list[str], log: str) -> None:
        out = open(folder / log, "ab")
        cluster.processes.append(subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=folder))

    try:
        launch([binaries["munged"], "--foreground", "--force", f"--key-file={key}", f"--socket={munge_socket}",
                f"--pid-file={folder / 'munged.pid'}", f"--seed-file={folder / 'munged.seed'}",
                f"--log-file={folder / 'munged.log'}"], "munged.out.log")
        _wait(lambda: munge_socket.exists(), timeout, "munged did not create its socket", cluster)
        launch([binaries["slurmctld"], "-D", "-i", "-f", str(conf)], "slurmctld.out.log")
        launch([binaries["slurmd"], "-D", "-f", str(conf), "-N", host], "slurmd.out.log")

        def idle() -> bool:
            out = subprocess.run([binaries["sinfo"], "-h", "-N", "-o", "%t"], env=env, capture_output=True, text=True)
            return out.returncode == 0 and out.stdout.strip() == "idle"

        _wait(idle, timeout, "the node did not become idle", cluster)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _wait(ready, timeout: float, what: str, cluster: Cluster) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        dead = [p for p in cluster.processes if p.poll() is not None]
        if dead:
            raise ClusterUnavailable(f"{Path(dead[0].args[0]).name} exited with {dead[0].returncode}: {_last_line(cluster)}")
        time.sleep(0.5)
    raise ClusterUnavailable(f"{what} within {timeout:.0f} s: {_last_line(cluster)}")


def _last_line(cluster: Cluster) -> str:
    lines = [line for p in sorted(cluster.folder.glob("*.log")) for line in p.read_text(errors="replace").splitlines()
             if "error" in line.lower() or "fatal" in line.lower()]
    return lines[-1].strip()[:300] if lines else "no error logged"
