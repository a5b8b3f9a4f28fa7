"""The cluster loop: N replicas and one router, advancing simulated time in event order.

Three kinds of event, each at a simulated time, processed earliest first:

    0  a replica's step ends         -> update_from_output, iteration log
    1  requests arrive               -> the router places each one, at its arrival time, in a replica's inbox
    2  a free replica has work       -> admit its inbox, schedule, execute; its clock moves to the step's end

Equal times go in that kind order, then by replica index, so the router sees every step that has ended by
``now`` and a step starting at ``now`` sees every request that has arrived by ``now``: exactly the single
engine's order (``runtime.core.engine``). With one replica the loop therefore replays ``Engine.run()`` step for
step, and the same config and seed give identical results. Each replica keeps its own ``VirtualClock``; an idle
replica's clock jumps to the arrival of the next request routed to it.

Every arrival is routed once, to one replica, and ends finished or rejected there; the loop checks both.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Sequence

from runtime.core.errors import ConfigError
from runtime.core.interface import RequestSource
from runtime.core.request import Request
from runtime.cluster.replica import Replica
from runtime.cluster.router import Router


@dataclass(slots=True)
class ClusterResult:
    requests: list[Request]
    # replica_of[i]: the replica requests[i] was routed to.
    replica_of: list[int]
    replicas: list[Replica]
    wall_s: float
    end_time: float
    stats: dict = field(default_factory=dict)


class ClusterEngine:
    def __init__(self, *, replicas: Sequence[Replica], router: Router, workload: RequestSource,
                 progress: object | None = None) -> None:
        if not replicas:
            raise ConfigError("cluster.num_replicas must be >= 1")
        assert [r.index for r in replicas] == list(range(len(replicas))), "replica indices must be 0..N-1"
        self.replicas = list(replicas)
        self.router = router
        self.workload = workload
        # Anything with update(n) and set_postfix_str(s) (a tqdm bar); None for silence.
        self.progress = progress

    def run(self) -> ClusterResult:
        replicas, router, workload, progress = self.replicas, self.router, self.workload, self.progress
        num_replicas = len(replicas)
        arrived: list[Request] = []
        replica_of: list[int] = []
        wall_start = time.perf_counter()
        num_done = reported = num_events = 0
        while True:
            # The earliest replica event: (time, kind, index), kind 0 = a step ends, 2 = a step starts.
            event = None
            for replica in replicas:
                t = replica.next_event_time()
                if t != math.inf:
                    key = (t, 0 if replica.in_flight is not None else 2, replica.index)
                    if event is None or key < event:
                        event = key
            t_arrival = workload.next_arrival_time() if workload.has_pending() else math.inf
            if t_arrival != math.inf and (event is None or (t_arrival, 1) < event[:2]):
                # Route every request arriving at t_arrival, one at a time, each seeing the previous placements.
                for request in workload.arrivals_until(t_arrival):
                    index = router.route(request, replicas, t_arrival)
                    if not (isinstance(index, int) and 0 <= index < num_replicas):
                        raise AssertionError(f"{type(router).__name__} routed {request.req_id} to {index!r}")
                    replicas[index].accept(request, t_arrival)
                    arrived.append(request)
                    replica_of.append(index)
                continue
            if event is None:
                break
            replica = replicas[event[2]]
            if event[1] == 0:
                num_done += len(replica.finish_step())
            else:
                num_done += replica.start_step()
            num_events += 1
            if progress is not None and not num_events % 1024:
                progress.update(num_done - reported)
                reported = num_done
                progress.set_postfix_str(f"t={event[0]:,.1f}s", refresh=False)
        if progress is not None:
            progress.update(num_done - reported)
        unaccounted = [r.req_id for r in arrived if not r.is_finished]
        if unaccounted or any(r.num_outstanding or r.inbox for r in replicas):
            raise AssertionError(f"{len(unaccounted)} requests neither finished nor rejected: {unaccounted[:5]}")
        return ClusterResult(requests=arrived, replica_of=replica_of, replicas=replicas,
                             wall_s=time.perf_counter() - wall_start,
                             end_time=max(r.clock.now() for r in replicas))
