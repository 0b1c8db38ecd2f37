"""Packaging: configure the real top-level CMakeLists.txt against a stand-in Slicer (docs/slicer-testing.md §5d).

The stand-in ``SlicerConfig.cmake`` (written below) replaces Slicer's build macros with recorders:
``slicerMacroBuildScriptedModule`` parses NAME/SCRIPTS/RESOURCES as Slicer's does, fails the configure for any listed
file that does not exist, and writes what it was given to a record file; ``slicer_add_python_unittest`` records its
script; the extension's ``Slicer_EXTENSION_GENERATE_CONFIG`` step records the EXTENSION_* variables (that is where
Slicer reads them). The tests then compare the record with the files on disk and with ``CADExtension.json``.

What this proves: every module is added and built, every file on disk is packaged and nothing listed is missing,
each module registers its in-Slicer unittest, and the extension metadata is consistent. What it does not prove: that
Slicer's real macros, ``ctkMacroCompilePythonScript`` or the factory build succeed (no Slicer build tree here).
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import pytest

REPO = Path(__file__).resolve().parents[2]
MODULES = ("CADExtension", "CADSegment", "CADClassify")
ENGINE = "CADExtension/cadcore"
NOT_PACKAGED = ("CMakeLists.txt",)  # build description, not a module file
IGNORED_PARTS = ("__pycache__", ".pytest_cache", ".ruff_cache")

STANDIN = r"""
# Stand-in for Slicer's SlicerConfig.cmake, written by Testing/static/test_cmake_packaging.py.
set(Slicer_FOUND TRUE)
if(NOT DEFINED BUILD_TESTING)  # Slicer builds its extensions with testing on; -DBUILD_TESTING=OFF turns it off
  set(BUILD_TESTING ON)
endif()
set(Slicer_USE_FILE "${CMAKE_CURRENT_LIST_DIR}/UseSlicer.cmake")
set(Slicer_EXTENSION_GENERATE_CONFIG "${CMAKE_CURRENT_LIST_DIR}/SlicerExtensionGenerateConfig.cmake")
set(Slicer_EXTENSION_CPACK "${CMAKE_CURRENT_LIST_DIR}/SlicerExtensionCPack.cmake")
set(STANDIN_RECORD "${CMAKE_BINARY_DIR}/standin-record.tsv")
file(WRITE "${STANDIN_RECORD}" "")

function(slicerMacroBuildScriptedModule)
  cmake_parse_arguments(MY_SLICER "WITH_GENERIC_TESTS;WITH_SUBDIR;VERBOSE" "NAME" "SCRIPTS;RESOURCES" ${ARGN})
  if(MY_SLICER_UNPARSED_ARGUMENTS)
    message(FATAL_ERROR "slicerMacroBuildScriptedModule: unknown arguments ${MY_SLICER_UNPARSED_ARGUMENTS}")
  endif()
  if(NOT MY_SLICER_NAME OR NOT MY_SLICER_SCRIPTS)
    message(FATAL_ERROR "slicerMacroBuildScriptedModule: NAME and SCRIPTS are required")
  endif()
  file(RELATIVE_PATH folder "${CMAKE_SOURCE_DIR}" "${CMAKE_CURRENT_SOURCE_DIR}")
  file(APPEND "${STANDIN_RECORD}" "MODULE\t${MY_SLICER_NAME}\t${folder}\t${MY_SLICER_WITH_GENERIC_TESTS}\n")
  foreach(kind SCRIPTS RESOURCES)
    foreach(entry IN LISTS MY_SLICER_${kind})
      if(NOT EXISTS "${CMAKE_CURRENT_SOURCE_DIR}/${entry}" OR IS_DIRECTORY "${CMAKE_CURRENT_SOURCE_DIR}/${entry}")
        message(FATAL_ERROR "slicerMacroBuildScriptedModule(${MY_SLICER_NAME}): ${kind} lists a missing file: "
                            "${folder}/${entry}")
      endif()
      file(APPEND "${STANDIN_RECORD}" "${kind}\t${MY_SLICER_NAME}\t${folder}/${entry}\n")
    endforeach()
  endforeach()
endfunction()

function(slicer_add_python_unittest)
  cmake_parse_arguments(MY "" "SCRIPT;TESTNAME_PREFIX" "SLICER_ARGS" ${ARGN})
  file(RELATIVE_PATH folder "${CMAKE_SOURCE_DIR}" "${CMAKE_CURRENT_SOURCE_DIR}")
  if(NOT EXISTS "${CMAKE_CURRENT_SOURCE_DIR}/${MY_SCRIPT}")
    message(FATAL_ERROR "slicer_add_python_unittest: missing script ${folder}/${MY_SCRIPT}")
  endif()
  file(APPEND "${STANDIN_RECORD}" "UNITTEST\t${folder}/${MY_SCRIPT}\n")
endfunction()
"""
GENERATE_CONFIG = r"""
foreach(name PROJECT_NAME EXTENSION_HOMEPAGE EXTENSION_CATEGORY EXTENSION_CONTRIBUTORS EXTENSION_DESCRIPTION
             EXTENSION_ICONURL EXTENSION_SCREENSHOTURLS EXTENSION_DEPENDS)
  file(APPEND "${STANDIN_RECORD}" "VAR\t${name}\t${${name}}\n")
endforeach()
"""

# Slicer/ExtensionsIndex schemas/slicer-extension-catalog-entry-schema-v1.0.1.json: required fields, property types.
INDEX_SCHEMA_REQUIRED = ("$schema", "category", "scm_url")
INDEX_SCHEMA_TYPES = {"$schema": str, "category": str, "scm_url": str, "scm_revision": str, "scm_type": str,
                      "build_dependencies": list, "build_subdirectory": str, "enabled": bool, "tier": int}


def cmake_executable() -> str | None:
    beside = Path(sys.executable).with_name("cmake")
    return str(beside) if beside.is_file() else shutil.which("cmake")


def configure(source: Path, work: Path, *options: str) -> tuple[subprocess.CompletedProcess, Path]:
    cmake = cmake_executable()
    if cmake is None:
        pytest.skip("cmake not found (pip install 'cmake>=3.25', the 'dev' extra)")
    standin = work / "slicer-standin"
    standin.mkdir(parents=True, exist_ok=True)
    (standin / "SlicerConfig.cmake").write_text(STANDIN)
    (standin / "UseSlicer.cmake").write_text("")
    (standin / "SlicerExtensionGenerateConfig.cmake").write_text(GENERATE_CONFIG)
    (standin / "SlicerExtensionCPack.cmake").write_text("")
    build = work / "build"
    result = subprocess.run([cmake, "-S", str(source), "-B", str(build), f"-DSlicer_DIR={standin}", *options],
                            capture_output=True, text=True, timeout=120)
    if result.returncode and "CMAKE_C_COMPILER" in result.stderr and "could be found" in result.stderr:
        pytest.skip("no C/C++ compiler: project() cannot enable its languages (a Slicer build needs one anyway)")
    return result, build / "standin-record.tsv"


def read_record(path: Path) -> dict:
    record: dict = {"modules": {}, "scripts": {}, "resources": {}, "unittests": set(), "vars": {}}
    for line in path.read_text().splitlines():
        kind, *fields = line.split("\t")
        if kind == "MODULE":
            name, folder, generic = fields
            record["modules"][name] = {"folder": folder, "genericTests": generic == "TRUE"}
        elif kind in ("SCRIPTS", "RESOURCES"):
            record[kind.lower()].setdefault(fields[0], []).append(fields[1])
        elif kind == "UNITTEST":
            record["unittests"].add(fields[0])
        elif kind == "VAR":
            record["vars"][fields[0]] = fields[1] if len(fields) > 1 else ""
    return record


@pytest.fixture(scope="module")
def record(tmp_path_factory) -> dict:
    result, path = configure(REPO, tmp_path_factory.mktemp("cmake"))
    assert result.returncode == 0, result.stdout + result.stderr
    return read_record(path)


def files_on_disk(root: Path, folder: str) -> set[str]:
    """Files of ``folder`` that belong to the source tree: git's view (tracked + untracked, not ignored) inside a
    checkout, else a walk without caches and build metadata."""
    if (root / ".git").exists() and shutil.which("git"):
        out = subprocess.run(["git", "-C", str(root), "ls-files", "-co", "--exclude-standard", "--", folder],
                             capture_output=True, text=True, check=True).stdout
        return {line for line in out.splitlines() if (root / line).is_file()}
    return {p.relative_to(root).as_posix() for p in (root / folder).rglob("*") if p.is_file()
            and not any(part in IGNORED_PARTS or part.endswith(".egg-info") for part in p.parts)
            and p.suffix != ".pyc"}


def engine_package_data(root: Path) -> list[str]:
    """``[tool.setuptools.package-data] cadcore`` patterns, relative to the repository."""
    text = (root / "pyproject.toml").read_text()
    try:
        import tomllib  # Python >= 3.11

        patterns = tomllib.loads(text)["tool"]["setuptools"]["package-data"]["cadcore"]
    except ModuleNotFoundError:  # Python 3.10: the one-line string array is also valid JSON
        match = re.search(r"^\[tool\.setuptools\.package-data\]\s*\ncadcore\s*=\s*(\[[^\]]*\])", text, re.M)
        assert match, "pyproject.toml: no [tool.setuptools.package-data] cadcore = [...]"
        patterns = json.loads(match.group(1))
    return [f"{ENGINE}/{pattern}" for pattern in patterns]


def expected_files(root: Path, module: str) -> set[str]:
    """What the module must package: every .py, every other file except CMakeLists.txt, but under the engine only
    what the pip package ships too (its .py files and the package-data patterns, e.g. the model files)."""
    patterns = engine_package_data(root)
    expected = set()
    for path in files_on_disk(root, module):
        if Path(path).name in NOT_PACKAGED:
            continue
        if path.startswith(ENGINE + "/") and not path.endswith(".py") and not any(
                fnmatch.fnmatchcase(path, pattern) for pattern in patterns):
            continue
        expected.add(path)
    return expected


def packaging_problems(root: Path, record: dict) -> list[str]:
    problems = []
    for module in MODULES:
        scripts, resources = record["scripts"].get(module, []), record["resources"].get(module, [])
        listed = scripts + resources
        problems += [f"listed twice: {p}" for p in sorted({p for p in listed if listed.count(p) > 1})]
        problems += [f"not a .py in SCRIPTS: {p}" for p in scripts if not p.endswith(".py")]
        expected = expected_files(root, module)
        problems += [f"on disk, not listed in {module}/CMakeLists.txt: {p}" for p in sorted(expected - set(listed))]
        problems += [f"listed, not a packaged file: {p}" for p in sorted(set(listed) - expected)]
    return problems


def test_every_module_is_built(record):
    assert set(record["modules"]) == set(MODULES)
    for name, module in record["modules"].items():
        assert module["folder"] == name
        assert module["genericTests"], f"{name}: WITH_GENERIC_TESTS missing"


def test_every_file_is_packaged_and_nothing_listed_is_missing(record):
    """Listed == on disk, per module. (A listed file that is missing already failed the configure.)"""
    assert packaging_problems(REPO, record) == []
    scripts = record["scripts"]
    assert "CADSegment/CADSegmentLib/SegmentationLogic.py" in scripts["CADSegment"]
    assert f"{ENGINE}/cli/__init__.py" in scripts["CADExtension"] and f"{ENGINE}/__main__.py" in scripts["CADExtension"]
    for module in MODULES:
        assert {f"{module}/Resources/Icons/{module}.png", f"{module}/Resources/UI/{module}.ui"} <= set(
            record["resources"][module])


def test_shipped_models_are_resources(record):
    """Each shipped model's card and weights are packaged (the engine refuses a card without its weights)."""
    models = sorted(p for p in (REPO / ENGINE / "models").glob("*/model.json"))
    if not models:
        pytest.skip("no model is shipped in CADExtension/cadcore/models yet")
    resources = set(record["resources"]["CADExtension"])
    for card in models:
        folder = card.parent.relative_to(REPO).as_posix()
        assert {f"{folder}/model.json", f"{folder}/model.safetensors"} <= resources


def test_unittests_registered(record):
    """Each module's in-Slicer tests are registered from Testing/Python (add_subdirectory(Testing)), and packaged,
    since the module file's ``<Module>Test`` delegates to them; the module file is not registered a second time."""
    expected = {f"{module}/Testing/Python/{module}ModuleTest.py" for module in MODULES}
    expected.add("CADSegment/Testing/Python/SegmentEditorCADAIEffectTest.py")  # the CAD AI effect's template test
    assert record["unittests"] == expected
    for module in MODULES:
        assert f"{module}/Testing/Python/{module}ModuleTest.py" in record["scripts"][module]


def test_tests_are_registered_only_with_build_testing(tmp_path):
    """``BUILD_TESTING`` OFF: the configure still passes and registers no unittest (every registration is guarded),
    while the packaged files stay the same."""
    result, path = configure(REPO, tmp_path, "-DBUILD_TESTING=OFF")
    assert result.returncode == 0, result.stdout + result.stderr
    off = read_record(path)
    assert off["unittests"] == set() and packaging_problems(REPO, off) == []


def test_extension_metadata(record):
    """Category and dependency as the ExtensionsIndex expects; icon and screenshots are raw.githubusercontent.com
    URLs of the homepage's repository whose files exist here as PNGs (the icon 128x128)."""
    variables = record["vars"]
    assert variables["PROJECT_NAME"] == "CADExtension"
    assert variables["EXTENSION_CATEGORY"] == "Segmentation"
    assert variables["EXTENSION_DEPENDS"] == "PyTorch"
    assert variables["EXTENSION_CONTRIBUTORS"] and variables["EXTENSION_DESCRIPTION"]
    homepage = urlparse(variables["EXTENSION_HOMEPAGE"])
    assert homepage.scheme == "https" and homepage.netloc == "github.com"
    owner_repo = homepage.path.strip("/")
    urls = [variables["EXTENSION_ICONURL"], *variables["EXTENSION_SCREENSHOTURLS"].split()]
    assert len(urls) >= 2
    for url in urls:
        prefix = f"https://raw.githubusercontent.com/{owner_repo}/main/"
        assert url.startswith(prefix), url
        path = REPO / url.removeprefix(prefix)
        assert path.is_file(), f"{url}: {path.relative_to(REPO)} does not exist"
        header = path.read_bytes()[:24]
        assert header[:8] == b"\x89PNG\r\n\x1a\n", f"{path.name} is not a PNG"
        if url == variables["EXTENSION_ICONURL"]:
            assert (int.from_bytes(header[16:20], "big"), int.from_bytes(header[20:24], "big")) == (128, 128)


def test_extensions_index_entry(record):
    """``<project>.json`` follows the catalog-entry schema v1.0.1 and agrees with the CMake metadata."""
    variables = record["vars"]
    entry = json.loads((REPO / f"{variables['PROJECT_NAME']}.json").read_text())
    assert set(INDEX_SCHEMA_REQUIRED) <= set(entry)
    assert set(entry) <= set(INDEX_SCHEMA_TYPES), f"not in the schema: {set(entry) - set(INDEX_SCHEMA_TYPES)}"
    for key, value in entry.items():
        assert type(value) is INDEX_SCHEMA_TYPES[key], f"{key}: {type(value).__name__}"
    assert "slicer-extension-catalog-entry-schema" in entry["$schema"]
    assert entry["category"] == variables["EXTENSION_CATEGORY"]
    depends = variables["EXTENSION_DEPENDS"]
    assert entry.get("build_dependencies", []) == ([] if depends == "NA" else depends.split())
    homepage = urlparse(variables["EXTENSION_HOMEPAGE"])
    assert entry["scm_url"].removesuffix(".git") == f"https://github.com/{homepage.path.strip('/')}"
    assert entry.get("scm_revision") == "main"  # the branch the icon and screenshot URLs point at
    assert 1 <= entry.get("tier", 1) <= 5


def test_forgotten_and_missing_files_are_caught(tmp_path):
    """The check is not vacuous: in a copy of the tree, an unlisted CADSegmentLib/forgotten.py is reported, and a
    listed file that was deleted fails the configure, naming the file. The same copy gets a model package: its card,
    weights and README are packaged by the glob, a training curve beside them is not (nor is it in the pip package)."""
    source = tmp_path / "source"
    ignore = shutil.ignore_patterns(*IGNORED_PARTS, "*.egg-info", "*.pyc")
    source.mkdir()
    for name in ("CMakeLists.txt", "pyproject.toml", "CADExtension.json"):
        shutil.copy2(REPO / name, source / name)
    for module in MODULES:
        shutil.copytree(REPO / module, source / module, ignore=ignore)
    (source / "CADSegment" / "CADSegmentLib" / "forgotten.py").write_text("")
    model = source / ENGINE / "models" / "standin-model"
    model.mkdir(parents=True, exist_ok=True)
    for name in ("model.json", "model.safetensors", "README.md", "training_curve.png"):
        (model / name).write_text("{}")
    result, path = configure(source, tmp_path / "work1")
    assert result.returncode == 0, result.stdout + result.stderr
    copied = read_record(path)
    assert packaging_problems(source, copied) == [
        "on disk, not listed in CADSegment/CMakeLists.txt: CADSegment/CADSegmentLib/forgotten.py"]
    packaged = {p for p in copied["resources"]["CADExtension"] if "standin-model" in p}
    assert packaged == {f"{ENGINE}/models/standin-model/{name}" for name in ("model.json", "model.safetensors",
                                                                             "README.md")}

    os.remove(source / "CADSegment" / "CADSegmentLib" / "InProcessRunner.py")
    result, _ = configure(source, tmp_path / "work2")
    assert result.returncode != 0
    message = " ".join(result.stderr.split())  # CMake wraps long messages
    assert "SCRIPTS lists a missing file: CADSegment/CADSegmentLib/InProcessRunner.py" in message
