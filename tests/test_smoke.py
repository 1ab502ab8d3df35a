import litedur


def test_workflow_runs_and_streams(tmp_path):
    app = litedur.Engine(tmp_path / "t.db")

    @app.step()
    def produce(key):
        for i in range(3):
            app.write_stream(key, i)
        return "ok"

    @app.workflow()
    def flow():
        return produce("numbers")

    with app:
        handle = app.start_workflow(flow)
        assert list(app.read_stream(handle.workflow_id, "numbers")) == [0, 1, 2]
        assert handle.get_result(timeout=10) == "ok"
