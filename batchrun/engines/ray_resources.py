"""How many decode tasks and inference actors a Ray run uses, and what each asks Ray for.

Sized from the resources of the cluster (or, for a local Ray, of this machine) and
overridable: `--workers` is the number of concurrent decode tasks, `--threads` the ORT
intra-op threads (and logical CPUs) of each CPU inference actor, so on a CPU cluster it
also sets how many actors fit on a node.

Two rules keep a small machine from deadlocking (ray-project/ray#44687: actors that take
every CPU starve the tasks that feed them): decode tasks ask Ray for no CPU (their pool
size bounds them, so actors, even ones Ray restarts elsewhere after a node loss, can never
starve them), and on every node the inference actors leave at least one CPU's worth of
capacity to decoding, counted here. A local Ray is started with exactly the
logical CPUs the plan asks for (one actor with every core for its ORT threads, plus one
per decode task), more than the machine's cores: decode tasks and ORT's threads share
the cores as in the local engine, where ORT's threads do not spin.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..decode.loader import available_cores, default_workers


@dataclass(frozen=True)
class NodeResources:
    cpus: float
    gpus: float


@dataclass(frozen=True)
class RayResources:
    decode_tasks: int  # concurrent decode tasks
    actors: int  # inference actors, one ORT session each
    actor_cpus: float  # logical CPUs per actor
    actor_gpus: float  # GPUs per actor (0 on CPU clusters)
    threads: int  # ORT intra-op threads per actor
    decode_cpus: float = 1.0  # logical CPUs per decode task (a half on single-CPU nodes)

    @property
    def gpu(self) -> bool:
        return self.actor_gpus > 0

    def local_cpus(self) -> int:
        """Logical CPUs of a local Ray started for this plan: everything it asks for, at once."""
        return int(self.actors * self.actor_cpus + self.decode_tasks * self.decode_cpus)

    def describe(self) -> str:
        device = f"{self.actor_gpus:g} GPU + " if self.gpu else ""
        return (
            f"{self.decode_tasks} decode task(s) x {self.decode_cpus:g} CPU, {self.actors} inference actor(s) x "
            f"{device}{self.actor_cpus:g} CPU ({self.threads} ORT thread(s))"
        )


def local_resources(device: str, gpus: int, workers: int | None, threads: int | None) -> RayResources:
    """For a Ray started here: one actor per GPU, or one CPU actor whose ORT threads use every core."""
    cores = available_cores()
    if gpus > 0 and device != "cpu":
        decode = workers if workers else default_workers("cuda", cores)
        return RayResources(decode, gpus, 1.0, 1.0, threads or 1)
    decode = workers if workers else default_workers("cpu", cores)
    threads = threads or cores
    return RayResources(decode, 1, float(threads), 0.0, threads)


def cluster_resources(
    nodes: list[NodeResources], device: str, workers: int | None, threads: int | None
) -> RayResources:
    """For a running cluster: one actor per GPU, or CPU actors that each leave a node's last CPU(s) to decoding."""
    total_cpus = sum(n.cpus for n in nodes)
    gpus = int(sum(n.gpus for n in nodes))
    if gpus > 0 and device != "cpu":
        decode = workers or max(1, int(total_cpus) - gpus)
        return RayResources(decode, gpus, 1.0, 1.0, threads or 1)
    cpu_nodes = [n for n in nodes if n.cpus >= 2]
    if not cpu_nodes:  # single-CPU nodes: the actor and one decode task share the CPU, half each
        largest = max(n.cpus for n in nodes)
        return RayResources(workers or 1, 1, largest / 2, 0.0, threads or 1, decode_cpus=largest / 2)
    smallest = min(n.cpus for n in cpu_nodes)
    room = max(int(n.cpus) - _decode_reserve(n.cpus) for n in cpu_nodes)  # the most an actor may take
    per_actor = min(threads, room) if threads else max(1, int(smallest) - _decode_reserve(smallest))
    actors = max(1, sum((int(n.cpus) - _decode_reserve(n.cpus)) // per_actor for n in cpu_nodes))
    decode = workers or max(1, int(total_cpus - actors * per_actor))
    return RayResources(decode, actors, float(per_actor), 0.0, threads or per_actor)


def _decode_reserve(cpus: float) -> int:
    """Logical CPUs of a node kept for decode tasks: a quarter, at least one."""
    return max(1, int(cpus) // 4)


def alive_nodes(nodes: list[dict[str, Any]]) -> list[NodeResources]:
    """`ray.nodes()` -> the resources of the nodes that are alive."""
    return [
        NodeResources(float(n["Resources"].get("CPU", 0)), float(n["Resources"].get("GPU", 0)))
        for n in nodes
        if n.get("Alive")
    ]
