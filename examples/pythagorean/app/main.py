"""Run the seed's example: `python -m app.main` (embedded cluster by default)."""

from app.geometry_jobs import pythagorean_remote_fanout, square_remote


def main() -> None:
    print("square_remote(7) =", square_remote(7))
    pairs = [(3, 4), (4, 5), (5, 6), (6, 7), (7, 8), (8, 9), (9, 10)]
    for (a, b), c in zip(pairs, pythagorean_remote_fanout(pairs), strict=False):
        print(f"pythagorean({a}, {b}) = {c:.4f}")


if __name__ == "__main__":
    main()
