"""CompactNAS experiments: data, training loops, run folders, the trial entry point, nnictl configs."""
