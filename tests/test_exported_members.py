import types

import mockgpt


def test_all_is_sorted_and_complete() -> None:
    members = {
        name
        for name, value in vars(mockgpt).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert mockgpt.__all__ == sorted(mockgpt.__all__)
    assert members == set(mockgpt.__all__)
