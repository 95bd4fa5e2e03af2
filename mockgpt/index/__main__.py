"""``python -m mockgpt.index SOURCE... [-o INDEX] [--partial] [--format F]``: build an index file."""

from mockgpt.cli import index

if __name__ == "__main__":
    index(prog_name="python -m mockgpt.index")
