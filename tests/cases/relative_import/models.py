from dataclasses import dataclass


@dataclass
class Shape:
    width: float
    height: float
