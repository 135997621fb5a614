"""The command-line tools beside training (doctor, bench, report, replay, references); nothing imports them."""
