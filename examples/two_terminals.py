"""The two-terminal recipe: a workflow writes a story to a durable stream, ``litedur tail`` shows it.

Terminal 1, the writer (run it again with the same --db to resume an interrupted story):

    python examples/two_terminals.py --db /tmp/story.db

Terminal 2, the reader (start it before or after the writer; it catches up from offset 0):

    litedur --db /tmp/story.db tail story tokens

Stop the writer half-way with Ctrl-C (it exits at once, like a crash) or ``kill -9``, and start it
again: the new process recovers the workflow, the step skips the words it already wrote, and
terminal 2 carries on without a gap or a repeat. Afterwards:

    litedur --db /tmp/story.db show story             # steps, attempts, streams, result
    litedur --db /tmp/story.db tail story tokens --json --no-follow
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import litedur

STORY = (
    "Once upon a time a process wrote a story one word at a time. Halfway through, someone pulled "
    "the plug. Another process opened the same file, found the story unfinished, and carried on "
    "from the very next word, while the reader in the other terminal never noticed a thing.\n"
)


def build(db: str, rate: float, words: int | None) -> tuple[litedur.Engine, object]:
    app = litedur.Engine(db)
    tokens = [word + ("" if word.endswith("\n") else " ") for word in STORY.split(" ")][:words]

    @app.step(max_attempts=3, interval=0.1)
    def tell(key: str) -> int:
        for token in tokens[len(app.already_written(key)) :]:  # skip what an earlier attempt wrote
            time.sleep(1 / rate)
            app.write_stream(key, token)
        return len(tokens)

    @app.workflow(name="story")
    def story(key: str) -> str:
        count = tell(key)
        app.close_stream(key)
        return f"{count} words"

    return app, story


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", default="story.db", help="database file (default: ./story.db)")
    parser.add_argument("--id", default="story", help="workflow id (default: story)")
    parser.add_argument("--rate", type=float, default=4.0, help="words per second (default: 4)")
    parser.add_argument("--words", type=int, help="tell only the first N words")
    options = parser.parse_args()
    app, story = build(options.db, options.rate, options.words)
    print(f"writing; in another terminal run:  litedur --db {options.db} tail {options.id} tokens", file=sys.stderr)
    try:
        with app:
            with litedur.SetWorkflowID(options.id):
                handle = app.start_workflow(story, "tokens")
            print(f"done: {handle.get_result()}", file=sys.stderr)
    except KeyboardInterrupt:
        print("\nstopped; run the same command again to resume", file=sys.stderr)
        os._exit(130)  # leave at once, like a crash: the workflow stays PENDING for the next run


if __name__ == "__main__":
    main()
