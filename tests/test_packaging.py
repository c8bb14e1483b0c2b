"""The twistd plugin is discoverable and cheap to import."""

from __future__ import annotations

import os
import subprocess
import sys

from twisted.application.service import IServiceMaker
from twisted.plugin import getPlugins
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase

REPO_ROOT = FilePath(__file__).parent().parent()

# What importing the plugin must not pull in: the transports' frameworks and
# the global reactor (twistd picks the reactor after reading its options).
HEAVY_MODULES = ["autobahn", "klein", "txredisapi", "twisted.internet.reactor", "wecompany.tap"]


class PluginTests(SynchronousTestCase):
    def test_discovered(self) -> None:
        self.assertIn("wecompany", [maker.tapname for maker in getPlugins(IServiceMaker)])

    def test_no_init_in_plugin_directories(self) -> None:
        twisted_dir = REPO_ROOT.child("twisted")
        self.assertTrue(twisted_dir.child("plugins").child("wecompany_plugin.py").exists())
        self.assertFalse(twisted_dir.child("__init__.py").exists())
        self.assertFalse(twisted_dir.child("plugins").child("__init__.py").exists())

    def test_plugin_import_is_light(self) -> None:
        script = (
            "import sys\n"
            "from twisted.plugins import wecompany_plugin\n"
            "assert wecompany_plugin.wecompany.tapname == 'wecompany'\n"
            f"print(','.join(m for m in {HEAVY_MODULES!r} if m in sys.modules))\n"
        )
        environ = dict(os.environ)
        environ["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO_ROOT.path, environ.get("PYTHONPATH")]))
        result = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT.path, env=environ,
                                capture_output=True, text=True, timeout=60)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stdout.strip(), "", "imported by the plugin file")


class ReadmeTests(SynchronousTestCase):
    def test_ci_runs_the_readme_test_command(self) -> None:
        script = REPO_ROOT.child(".ci").child("run").getContent().decode("utf-8")
        command = script.split('TEST_COMMAND="', 1)[1].split('"\n', 1)[0]
        self.assertIn("twisted.trial tests", command)
        self.assertIn(f"    {command}\n", REPO_ROOT.child("README.rst").getContent().decode("utf-8"))
        self.assertTrue(os.access(REPO_ROOT.child(".ci").child("run").path, os.X_OK))


class ReadmeOptionsTests(SynchronousTestCase):
    def test_the_options_table_lists_every_option(self):
        import attrs

        from wecompany.config import Config
        readme = REPO_ROOT.child("README.rst").getContent().decode("utf-8")
        listed = {line.split()[0][2:] for line in readme.splitlines() if line.startswith("    --")}
        self.assertEqual(listed, {field.name.replace("_", "-") for field in attrs.fields(Config)})

    def test_the_configuration_guide_describes_every_option(self):
        from wecompany.config import Config
        guide = REPO_ROOT.child("docs").child("configuration.rst").getContent().decode("utf-8")
        missing = [name.replace("_", "-") for name in Config.option_names()
                   if f"``{name.replace('_', '-')}``" not in guide]
        self.assertEqual(missing, [])


class NoMergeLeftoversTests(SynchronousTestCase):
    def test_no_conflict_markers_in_the_tree(self):
        found = []
        for top in ("wecompany", "tests", "twisted", "docs", "bench", "etc", "README.rst", "setup.cfg", ".ci"):
            base = REPO_ROOT.child(top)
            paths = [base] if base.isfile() else (base.walk() if base.exists() else [])
            for path in paths:
                if not path.isfile() or path.splitext()[1] not in ("", ".py", ".rst", ".cfg", ".txt", ".sql",
                                                                    ".ini", ".example", ".service"):
                    continue
                for number, line in enumerate(path.getContent().split(b"\n"), 1):
                    if line.startswith((b"<<<<<<< ", b">>>>>>> ")):  # (7 = is also an RST underline)
                        found.append(f"{path.path}:{number}")
        self.assertEqual(found, [])


class WebFilesPackagedTests(SynchronousTestCase):
    """The console's and the API docs' files ship in the wheel (package data) and the sdist (MANIFEST.in)."""

    def test_console_and_docs_are_package_data(self):
        import configparser

        setup = configparser.ConfigParser()
        setup.read(REPO_ROOT.child("setup.cfg").path)
        patterns = [p.strip() for p in setup["options.package_data"]["wecompany.web"].split(",")]
        self.assertEqual(sorted(patterns), ["apidocs/*", "console/*"])
        manifest = REPO_ROOT.child("MANIFEST.in").getContent().decode("utf-8")
        for name in ("console", "apidocs"):
            directory = REPO_ROOT.child("wecompany").child("web").child(name)
            self.assertIn(f"recursive-include wecompany/web/{name} *", manifest)
            # "dir/*" does not reach into subdirectories: there must be none.
            self.assertEqual([c.basename() for c in directory.children() if c.isdir()], [])
            self.assertTrue(directory.child("index.html").isfile())
