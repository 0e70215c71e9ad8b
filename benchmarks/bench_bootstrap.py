"""Bootstrap speed line of ``python -m evalcam bench`` (issue 15): 50,000 images x 10 metrics x 1,000
resamples, target under 10 s on 2 CPU cores."""

from evalcam.stats.speed import bench_rows

if __name__ == "__main__":
    for row in bench_rows():
        print(f"{row['name']}: {row['seconds']} s (target {row['target_seconds']} s)")
