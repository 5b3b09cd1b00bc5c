"""Flatland's action numbers, without importing flatland (agents stay light)."""

DO_NOTHING = 0
MOVE_LEFT = 1
MOVE_FORWARD = 2
MOVE_RIGHT = 3
STOP_MOVING = 4
N_ACTIONS = 5
