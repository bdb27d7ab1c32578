"""No silent skips in CI: tests that need ../shared/data fail, not skip, when ``CI=true`` (or
``CI_REQUIRE_SHARED_DATA``) and the data is missing; any other skip is reported as a failure there too."""
from __future__ import annotations

from pathlib import Path

import pytest
from conftest import require_shared

pytest_plugins = ("pytester",)

CONFTEST = Path(__file__).with_name("conftest.py")


@pytest.fixture
def no_ci(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("CI_REQUIRE_SHARED_DATA", raising=False)
    return monkeypatch


def test_missing_shared_data_skips_outside_ci(no_ci: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with pytest.raises(pytest.skip.Exception, match="shared data not present"):
        require_shared(tmp_path / "missing.npz")
    assert require_shared(tmp_path) == tmp_path


@pytest.mark.parametrize(("name", "value", "setting"), [("CI", "true", "CI=true"), ("CI", "1", "CI=true"),
                                                        ("CI_REQUIRE_SHARED_DATA", "1", "CI_REQUIRE_SHARED_DATA")])
def test_missing_shared_data_fails_in_ci(no_ci: pytest.MonkeyPatch, tmp_path: Path, name: str, value: str,
                                         setting: str) -> None:
    no_ci.setenv(name, value)
    with pytest.raises(pytest.fail.Exception, match=f"missing.npz.*{setting}"):
        require_shared(tmp_path / "missing.npz")


def test_ci_reports_every_skip_as_failure(no_ci: pytest.MonkeyPatch, pytester: pytest.Pytester) -> None:
    pytester.makeconftest(CONFTEST.read_text(encoding="utf-8"))
    pytester.makepyfile(
        test_inner="""
        from pathlib import Path
        import pytest
        from conftest import require_shared

        def test_needs_data():
            require_shared(Path("no-such-shared-data"))

        def test_skips():
            pytest.skip("not here")

        @pytest.mark.skipif(True, reason="marker")
        def test_marked():
            pass

        @pytest.mark.xfail(reason="expected", strict=True)
        def test_expected_failure():
            assert False

        def test_passes():
            pass
        """,
        test_module_skip="""
        import pytest
        pytest.skip("whole module", allow_module_level=True)
        """)
    no_ci.setenv("CI", "true")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--continue-on-collection-errors")
    result.assert_outcomes(passed=1, failed=2, errors=2, xfailed=1)  # a skip in setup or collection: an error
    result.stdout.fnmatch_lines(["*shared data missing: no-such-shared-data (CI=true*",
                                 "*test_skips - skipped, but CI=true forbids skipping: *not here*",
                                 "*test_module_skip.py - skipped, but CI=true forbids skipping: *whole module*",
                                 "*test_marked - skipped, but CI=true forbids skipping: *marker*"])
