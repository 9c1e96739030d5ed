"""`python -m skutag` runs the CLI."""

from skutag.cli import main

if __name__ == "__main__":
    main()
