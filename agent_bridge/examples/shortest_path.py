"""A deterministic shortest-path agent that needs no observation and does not import flatland.

``python -m agent_bridge.examples.shortest_path`` serves it.

``reset`` decodes Flatland's 16-bit rail cells from the episode facts into a graph over
(row, col, direction) states and builds, per target, a distance map by a backwards BFS (the idea of
flatland's ``DistanceMap``). Rail cell layout (flatland's ``Grid4Transitions``): a train facing ``d``
(0=N, 1=E, 2=S, 3=W) may leave by the exits in the nibble ``(cell >> ((3 - d) * 4)) & 0xF``; exit
``o`` is allowed iff ``(nibble >> (3 - o)) & 1``, and leads to the neighbour in direction ``o``,
facing ``o``.

Two ways to drive the trains:

* ``ShortestPath(plan=False)``: greedy. Every train takes the allowed exit nearest its target.
  Trains meeting head-on on a single track then block each other for good (a deadlock), which is
  how most of its trains are lost.
* ``ShortestPath()`` (the default): the same shortest-path idea in space and time. In ``reset``,
  trains are routed one after another by an A* search over (cell, direction, step), around the
  cells the trains before them already hold, with waits allowed (prioritised planning). A few
  orders are tried (earliest departure, shortest trip, fastest train first) and the plan routing
  the most trains is kept. In ``act`` the plan is followed by *order*, not by clock: a train
  enters a cell only once every train planned through that cell before it has left it. Delays
  (a malfunction) then only make trains wait; they cannot deadlock, since the order comes from
  one conflict-free plan. A train for which no route fits in the episode stays at home.

Everything is deterministic: same episode, same actions. Planning effort is bounded by counted
A* expansions, never by the clock.
"""

from __future__ import annotations

import heapq
from collections import deque
from typing import Any, Mapping

import numpy as np

from agent_bridge import serve
from agent_bridge.actions import MOVE_FORWARD, MOVE_LEFT, MOVE_RIGHT, STOP_MOVING

# Flatland's TrainState values.
WAITING, READY_TO_DEPART, MALFUNCTION_OFF_MAP, MOVING, STOPPED, MALFUNCTION, DONE = range(7)

DR = (-1, 0, 1, 0)  # row delta of moving N, E, S, W
DC = (0, 1, 0, -1)  # col delta
UNREACHABLE = 1 << 30
MAX_EXPANSIONS = 200_000
"""A* node budget per train: a train whose route is not found within it stays at home."""
PLANNING_WORK = 10_000_000
"""A* expansions over all planning orders (roughly 30 s here); further orders are skipped past it."""

PRIORITIES = ("departure", "shortest", "fastest")
"""Planning orders tried in `ShortestPath.reset`; the plan that routes the most trains is kept."""

Cell = tuple[int, int]
State = tuple[int, int, int]  # (row, col, direction the train faces)


def exits(cell: int, direction: int) -> tuple[int, ...]:
    """The exit directions allowed for a train facing `direction` in a cell with these transitions."""
    nibble = (int(cell) >> ((3 - direction) * 4)) & 0xF
    return tuple(o for o in range(4) if (nibble >> (3 - o)) & 1)


def action_for(direction: int, exit_direction: int) -> int:
    """The action that takes a train facing `direction` out by `exit_direction`."""
    if exit_direction == (direction - 1) % 4:
        return MOVE_LEFT
    if exit_direction == (direction + 1) % 4:
        return MOVE_RIGHT
    return MOVE_FORWARD  # straight on, or the U-turn at a dead end (the only exit there)


def steps_per_cell(speed: float) -> int:
    """Steps a train of this speed spends in a cell (flatland speeds are 1/k)."""
    return max(1, int(np.ceil(1.0 / max(speed, 1e-6) - 1e-6)))


class RailGraph:
    """The rail as a graph over (row, col, direction) states, decoded from the raw transition grid."""

    def __init__(self, rail: Any) -> None:
        grid = np.asarray(rail, dtype=np.int64)
        self.height, self.width = grid.shape
        self.exits: dict[State, tuple[int, ...]] = {}
        self.predecessors: dict[State, list[State]] = {}
        for r, c in zip(*np.nonzero(grid)):
            r, c = int(r), int(c)
            cell = int(grid[r, c])
            for d in range(4):
                outs = exits(cell, d)
                if not outs:
                    continue
                self.exits[(r, c, d)] = outs
                for o in outs:
                    nr, nc = r + DR[o], c + DC[o]
                    if 0 <= nr < self.height and 0 <= nc < self.width:
                        self.predecessors.setdefault((nr, nc, o), []).append((r, c, d))
        self._distances: dict[Cell, dict[State, int]] = {}

    def distances_to(self, target: Cell) -> dict[State, int]:
        """Cells still to enter, from each state, to reach `target` (0 on it); cached per target."""
        cached = self._distances.get(target)
        if cached is not None:
            return cached
        dist: dict[State, int] = {}
        queue: deque[State] = deque()
        for d in range(4):  # arriving at the target in any direction counts
            dist[(target[0], target[1], d)] = 0
            queue.append((target[0], target[1], d))
        while queue:
            state = queue.popleft()
            step = dist[state] + 1
            for pred in self.predecessors.get(state, ()):
                if pred not in dist:
                    dist[pred] = step
                    queue.append(pred)
        self._distances[target] = dist
        return dist

    def nearest_exit(self, state: State, target: Cell) -> int | None:
        """The allowed exit from `state` nearest `target` (ties: forward, left, right, back)."""
        outs = self.exits.get(state, ())
        if not outs:
            return None
        dist = self.distances_to(target)
        r, c, d = state
        best, best_cost = outs[0], UNREACHABLE
        for o in (d, (d - 1) % 4, (d + 1) % 4, (d + 2) % 4):
            if o in outs:
                cost = dist.get((r + DR[o], c + DC[o], o), UNREACHABLE)
                if cost < best_cost:
                    best, best_cost = o, cost
        return best


class Reservations:
    """Which (cell, step) pairs the trains planned so far hold.

    A train holds a cell from the step it enters it through the step it leaves it (one step of
    margin: the next train may enter only once it has *seen* the cell empty), and its target cell
    only on the step it arrives (it leaves the map then).
    """

    def __init__(self) -> None:
        self.held: dict[Cell, bytearray] = {}  # cell -> one byte per step, 1 where held

    def free(self, cell: Cell, first: int, last: int) -> bool:
        steps = self.held.get(cell)
        if steps is None or first >= len(steps):
            return True
        if first == last:
            return not steps[first]
        return steps.find(1, first, last + 1) < 0

    def hold(self, cell: Cell, first: int, last: int) -> None:
        steps = self.held.get(cell)
        if steps is None:
            steps = self.held[cell] = bytearray(last + 1)
        elif len(steps) <= last:
            steps.extend(bytes(last + 1 - len(steps)))
        steps[first:last + 1] = b"\x01" * (last + 1 - first)


def plan_route(graph: RailGraph, start: State, target: Cell, earliest: int, k: int, horizon: int,
               booked: Reservations, work: list[int] | None = None) -> list[tuple[State, int, int]] | None:
    """A* over (state, step): the earliest arrival at `target` around `booked`, or None.

    The train enters the map at `start` at step `earliest` or later, and can leave a cell `k` steps
    after entering it, or later. Returns the route as (state, entered_at, left_at) per cell; the
    last entry is the target, with left_at == entered_at. When `work` is given, the number of
    A* expansions is added to ``work[0]``.
    """
    dist = graph.distances_to(target)
    d_start = dist.get(start)
    if d_start is None or start not in graph.exits:
        return None
    start_cell = start[:2]
    if start_cell == target:
        return [(start, earliest, earliest)]
    # A node is (state, t): on the map, t is the first step the train may leave its cell; off the
    # map (state None), t is the step it would enter the map. The heap is ordered by a lower bound
    # of the arrival step, then later t first (deeper), then insertion order: deterministic.
    heap: list[tuple[int, int, int, Any, int]] = []
    parents: dict[tuple[Any, int], tuple[Any, int] | None] = {}

    def push(node: tuple[Any, int], parent: tuple[Any, int] | None, arrival_bound: int) -> None:
        if node in parents or arrival_bound > horizon:
            return
        parents[node] = parent
        heapq.heappush(heap, (arrival_bound, -node[1], len(parents), node[0], node[1]))

    push((None, earliest), None, earliest + d_start * k)
    expansions = 0
    try:
        while heap and expansions < MAX_EXPANSIONS:
            _, _, _, state, t = heapq.heappop(heap)
            expansions += 1
            node = (state, t)
            if state is None:  # off the map: wait another step, or enter at the start cell now
                push((None, t + 1), node, t + 1 + d_start * k)
                if booked.free(start_cell, t, t + k - 1):
                    push((start, t + k), node, t + d_start * k)
                continue
            r, c, d = state
            if not booked.free((r, c), t, t):  # we are still here at step t, leaving or not
                continue
            push((state, t + 1), node, t + 1 + (dist[state] - 1) * k)  # wait one step
            for o in graph.exits[state]:
                nxt = (r + DR[o], c + DC[o], o)
                remaining = dist.get(nxt)
                if remaining is None:
                    continue
                if remaining == 0:
                    if booked.free(nxt[:2], t, t):
                        return _unwind(parents, node, nxt, t)
                    continue
                if booked.free(nxt[:2], t, t + k - 1):
                    push((nxt, t + k), node, t + k + (remaining - 1) * k)
        return None
    finally:
        if work is not None:
            work[0] += expansions


def _unwind(parents: dict, node: tuple[Any, int], target: State, arrival: int) -> list[tuple[State, int, int]]:
    """Turn the A* parent links ending at `node` into (state, entered_at, left_at) per cell."""
    chain = []
    while node is not None:
        chain.append(node)
        node = parents[node]
    chain.reverse()
    entered = max(t for state, t in chain if state is None)  # the step the train enters the map
    route: list[tuple[State, int, int]] = []
    for state, t in chain:
        if state is None:
            continue
        if route and route[-1][0] == state:  # waited a step: it leaves later
            route[-1] = (state, route[-1][1], t)
        else:  # entered a new cell when the previous one was left
            route.append((state, route[-1][2] if route else entered, t))
    route.append((target, arrival, arrival))
    return route


class ShortestPath:
    """Send every train along a shortest route to its target; see the module docstring."""

    def __init__(self, plan: bool = True, priorities: tuple[str, ...] = PRIORITIES) -> None:
        self.plan = plan
        self.priorities = tuple(priorities)
        self.graph: RailGraph | None = None
        self.n_agents = 0
        self.initial: list[State] = []
        self.targets: list[Cell | None] = []
        self.routes: dict[int, list[tuple[State, int, int]]] = {}
        self.progress: dict[int, int] = {}
        self.visits: dict[Cell, list[tuple[int, int]]] = {}  # cell -> [(handle, route index)] in plan order

    # ------------------------------------------------------------------ planning
    def reset(self, episode_info: Mapping[str, Any]) -> None:
        env = episode_info["env"]
        agents = env["agents"]
        self.n_agents = int(env["n_agents"])
        self.graph = RailGraph(env["rail"])
        self.initial = [(int(p[0]), int(p[1]), int(d)) for p, d in zip(agents["initial_position"],
                                                                    agents["initial_direction"])]
        self.targets = [(int(t[0]), int(t[1])) if t is not None else None for t in agents["target"]]
        self.routes, self.progress, self.visits = {}, {}, {}
        for target in sorted({t for t in self.targets if t is not None}):
            self.graph.distances_to(target)
        if not self.plan:
            return
        n = self.n_agents
        departures = [int(x) for x in agents.get("earliest_departure", [0] * n)]
        speeds = [float(x) for x in agents.get("speed", [1.0] * n)]
        horizon = int(env.get("max_episode_steps") or 10_000)
        best: tuple | None = None
        work = [0]
        for priority in self.priorities:
            before = work[0]
            routes = self._plan(self._planning_order(priority, departures, speeds), departures, speeds,
                                horizon, work)
            # Most trains routed first, then the earliest arrivals in total; ties keep the earlier order.
            key = (-len(routes), sum(route[-1][1] for route in routes.values()))
            if best is None or key < best[0]:
                best = (key, routes)
            if work[0] + (work[0] - before) > PLANNING_WORK:
                break  # another order would likely take too long (counted, not timed: deterministic)
        self.routes = best[1] if best else {}
        self.progress = {h: -1 for h in self.routes}  # -1: not on the map yet
        entries = sorted((entered, h, i) for h, route in self.routes.items()
                         for i, (_, entered, _) in enumerate(route))
        for _, h, i in entries:
            self.visits.setdefault(self.routes[h][i][0][:2], []).append((h, i))
        self._visit_rank = {}
        for cell, order in self.visits.items():
            for rank, visit in enumerate(order):
                self._visit_rank[visit] = rank

    def _plan(self, order: list[int], departures: list[int], speeds: list[float], horizon: int,
              work: list[int]) -> dict[int, list[tuple[State, int, int]]]:
        """Route the trains one after another in `order`, each around the ones before it."""
        booked = Reservations()
        routes: dict[int, list[tuple[State, int, int]]] = {}
        for h in order:
            target = self.targets[h]
            if target is None:
                continue
            # A train turns READY_TO_DEPART in step max(earliest_departure, 1) (the state machine
            # moves in steps only), and can be on the map one step later.
            earliest = max(departures[h], 1) + 1
            route = plan_route(self.graph, self.initial[h], target, earliest, steps_per_cell(speeds[h]),
                               horizon, booked, work)
            if route is None:
                continue  # no route fits before the episode ends: this train stays at home
            for state, entered, left in route:
                booked.hold(state[:2], entered, left)
            routes[h] = route
        return routes

    def _planning_order(self, priority: str, departures: list[int], speeds: list[float]) -> list[int]:
        """The handles in planning order: earlier trains get their pick of the rail."""
        def travel(h: int) -> int:  # steps of the unobstructed route
            target = self.targets[h]
            cells = self.graph.distances_to(target).get(self.initial[h], UNREACHABLE) if target else UNREACHABLE
            return cells * steps_per_cell(speeds[h])

        if priority == "shortest":
            return sorted(range(self.n_agents), key=lambda h: (travel(h), departures[h], h))
        if priority == "fastest":
            return sorted(range(self.n_agents), key=lambda h: (-speeds[h], departures[h], h))
        if priority == "departure":
            return sorted(range(self.n_agents), key=lambda h: (departures[h], h))
        raise ValueError(f"unknown planning priority {priority!r}")

    # ------------------------------------------------------------------ acting
    def act(self, observations: Mapping[int, Any], info: Mapping[str, Any]) -> dict:
        n = self.n_agents
        states = info.get("state") or [WAITING] * n
        required = info.get("action_required") or [False] * n
        positions = info.get("position") or [None] * n
        directions = info.get("direction") or [None] * n
        if self.plan:
            return self._follow_plan(states, required, positions, directions)
        return self._greedy(states, required, positions, directions)

    def _greedy(self, states, required, positions, directions) -> dict:
        """Every train out by the exit nearest its target; no care for the other trains."""
        actions: dict[int, int] = {}
        for h in range(self.n_agents):
            if states[h] == DONE or self.targets[h] is None:
                continue
            if positions[h] is None:
                if states[h] == READY_TO_DEPART:
                    actions[h] = MOVE_FORWARD  # enter at the start cell
                continue
            here = (int(positions[h][0]), int(positions[h][1]), int(directions[h]))
            exit_direction = self.graph.nearest_exit(here, self.targets[h])
            actions[h] = MOVE_FORWARD if exit_direction is None else action_for(here[2], exit_direction)
        return actions

    def _update_progress(self, h: int, state: int, position: Any) -> None:
        """Advance train `h` along its route to the cell it is seen in (-1: not on the map yet)."""
        route = self.routes[h]
        if state == DONE:
            self.progress[h] = len(route)
            return
        if position is None:
            return
        cell = (int(position[0]), int(position[1]))
        for j in range(max(self.progress[h], 0), len(route)):
            if route[j][0][:2] == cell:
                self.progress[h] = j
                return

    def _may_enter(self, h: int, i: int) -> bool:
        """Has every train planned through route cell `i` of train `h` before it left that cell?"""
        cell = self.routes[h][i][0][:2]
        rank = self._visit_rank[(h, i)]
        for other, j in self.visits[cell][:rank]:
            if self.progress[other] <= j:
                return False
        return True

    def _follow_plan(self, states, required, positions, directions) -> dict:
        """Move along the planned routes, holding a train back while its next cell is not its turn.

        On-map trains get their move at every step, not only when ``action_required``: flatland
        reads the action every step, and a train left STOPPED inside a cell (after a malfunction,
        say) reports ``action_required`` False yet restarts only on a move action, so an agent
        that waits for ``action_required`` strands it there. STOP_MOVING is sent only at a cell's
        exit point (``action_required``), where holding back means waiting for the next cell.
        """
        for h in self.routes:
            self._update_progress(h, states[h], positions[h])
        actions: dict[int, int] = {}
        for h, route in self.routes.items():
            state, i = states[h], self.progress[h]
            if state == DONE or i >= len(route):
                continue
            if positions[h] is None:
                # After an off-map malfunction a move action puts the train straight on the map.
                if state in (READY_TO_DEPART, MALFUNCTION_OFF_MAP) and self._may_enter(h, 0):
                    actions[h] = MOVE_FORWARD
                continue
            if i + 1 >= len(route):
                continue
            facing = int(directions[h])
            move = action_for(facing, route[i + 1][0][2])
            if required[h] and not self._may_enter(h, i + 1):
                move = STOP_MOVING  # a train planned through the next cell before us has not left it
            actions[h] = move
        return actions


if __name__ == "__main__":
    serve(ShortestPath())
