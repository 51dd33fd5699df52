"""Syntax files that load a bundle into R, Stata, SAS and SPSS with its labels, value labels,
factors and dates (as REDCap ships them with its exports), each from the bundle's own folder:

- ``syntax/load.R`` reads the CSV files (text, integers, numbers, dates and datetimes typed; coded
  variables as factors with the protocol's words, their levels in the code list's order; empty =
  NA; each variable's whole label in its ``label`` attribute) into a list ``bundle`` of data frames;
- ``syntax/load.do`` reads the Stata files (which carry the labels, value labels and dates) into
  one frame per table and sets level 1 of ``arm`` as its base level;
- ``syntax/load.sas`` defines every code list with PROC FORMAT, reads the transport files into
  WORK with their formats and gives each variable its whole label (a table with no rows, which has
  no transport file, is made empty with its variables);
- ``syntax/load.sps`` reads the Stata files into one SPSS dataset per table.

The arm variable is ``arm`` in both bundles, with the same level order (its code list, ``ARM``:
the reference arm first, or in a blinded bundle the dummy code standing for it; then the others
in the protocol's order): level 1 of R's factor, code 1 in Stata, SAS and SPSS. So a program
written on the blinded bundle (``i.arm`` in Stata, the first level of the factor in R) runs
unchanged on the unblinded one.
"""
from __future__ import annotations

from trial.exports.dataset import ANALYSIS_TABLES, Codes, Table


def _folder(t: Table, fmt: str) -> str:
    return "analysis" if t.name in ANALYSIS_TABLES else fmt


def _r(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


R_HEAD = [  # load.R's opening: where the bundle is (sourced or run with Rscript), and the reader of a CSV
    '# Loads this locked dataset bundle into R with its labels, factors and dates:',
    '#   source("syntax/load.R")   (from the bundle\'s folder), or  Rscript syntax/load.R',
    '# Every table becomes a data frame in the list `bundle` (bundle$particip, ...). Coded variables are',
    '# factors labelled with the protocol\'s words (arm: the reference arm first); dates are Date, datetimes',
    '# POSIXct in UTC; an empty cell is NA; attr(x, "label") holds each variable\'s whole label.',
    'local({',
    '  args <- commandArgs(trailingOnly = FALSE)',
    '  script <- character(0)',
    '  for (i in rev(seq_len(sys.nframe()))) if (!is.null(sys.frame(i)$ofile)) {  # source()d',
    '    script <- sys.frame(i)$ofile; break }',
    '  if (!length(script)) script <- sub("^--file=", "", args[grepl("^--file=", args)])  # Rscript',
    '  root <<- if (length(script)) dirname(dirname(normalizePath(script))) else getwd()',
    '})',
    'bundle <- list()',
    '.read <- function(path, classes) {',
    '  d <- read.csv(file.path(root, path), colClasses = classes, na.strings = "", encoding = "UTF-8",',
    '                check.names = FALSE, stringsAsFactors = FALSE)',
    "  # the apostrophe the CSV puts before text a spreadsheet would run as a formula (=, +, -, @, tab, CR)",
    "  d[] <- lapply(d, function(x) if (is.character(x)) sub(\"^'('*[-=+@\\t\\r])\", \"\\\\1\", x) else x)",
    '  d',
    '}',
    '',
]
R_CLASSES = {"int": "integer", "float": "numeric"}  # else "character" (dates and datetimes converted after)


def load_r(tables: list[Table]) -> str:
    out = list(R_HEAD)
    for t in tables:
        out += _r_table(t)
    out.append("rm(d, .read)")
    out.append('message("Loaded ", length(bundle), " tables into `bundle`: ", paste(names(bundle), collapse = ", "))')
    return "\n".join(out) + "\n"


def _r_table(t: Table) -> list[str]:
    """One table's lines of load.R: read with each column's class, dates and datetimes converted,
    coded variables made factors (levels in the code list's order: the arm's reference first), the
    labels set, and kept as ``bundle$<table>``."""
    classes = [f"{v.name} = {_r(R_CLASSES.get(v.type, 'character'))}" for v in t.vars]
    path = _r(f"{_folder(t, 'csv')}/{t.name}.csv")
    out = [f"# {t.name}: {t.label}", f"d <- .read({path}, c({', '.join(classes)}))"]
    for v in t.vars:
        if v.type == "date":
            out.append(f"d${v.name} <- as.Date(d${v.name})")
        elif v.type == "datetime":
            out.append(f'd${v.name} <- as.POSIXct(d${v.name}, format = "%Y-%m-%dT%H:%M:%S", tz = "UTC")')
        if v.codes is not None:
            items = v.codes.items
            levels = ", ".join(str(k) if v.codes.numeric else _r(str(k)) for k, _ in items)
            labels = ", ".join(_r(m) for _, m in items)
            out.append(f"d${v.name} <- factor(d${v.name}, levels = c({levels}), labels = c({labels}))")
        out.append(f'attr(d${v.name}, "label") <- {_r(v.label)}')
    out += [f'attr(d, "label") <- {_r(t.label)}', f"bundle${t.name} <- d", ""]
    return out


def load_do(tables: list[Table]) -> str:
    out = ["* Loads this locked dataset bundle into Stata (16 or later: one frame per table):",
           "*   cd to the bundle's folder, then:  do syntax/load.do",
           "* The Stata files carry every label, value label and date format; arm's code 1 (the reference",
           "* arm, or in a blinded bundle the dummy code standing for it) is set as its base level for",
           "* factor-variable notation (i.arm).",
           'local root "`c(pwd)\'"', ""]
    for t in tables:
        out.append(f"* {t.name}: {t.label}")
        out.append(f"capture frame drop {t.name}")
        out.append(f"frame create {t.name}")
        out.append(f"frame {t.name}: use \"`root'/{_folder(t, 'dta')}/{t.name}.dta\", clear")
        for v in t.vars:
            if v.name == "arm" and v.codes is not None:
                out.append(f"frame {t.name}: fvset base 1 {v.name}")
        out.append("")
    out.append("frame change particip")
    return "\n".join(out) + "\n"


def _sas_text(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def load_sas(tables: list[Table], counts: dict[str, int]) -> str:
    """``counts``: the rows of each table (a table of none has no transport file)."""
    out = ["/* Loads this locked dataset bundle into SAS (9.4), into WORK, with formats and whole labels.",
           "   Set ROOT to the bundle's folder (here: the current directory), then run the file. */",
           "%let root = .;", "options validvarname=v7;", "", "proc format;"]
    seen: dict[str, Codes] = {}
    for t in tables:
        for v in t.vars:
            if v.codes is not None and v.codes.name not in seen:
                seen[v.codes.name] = v.codes
    for name in sorted(seen):
        c = seen[name]
        pairs = " ".join(f"{code}={_sas_text(m)}" for code, m in sorted(c.value_labels().items()))
        out.append(f"  value {name} {pairs};")
    out += ["run;", ""]
    for i, t in enumerate(tables):
        out.append(f"/* {t.name}: {t.label} */")
        if counts[t.name]:
            out.append(f"libname x{i} xport \"&root/{_folder(t, 'xpt')}/{t.name}.xpt\" access=readonly;")
            out.append(f"data work.{t.name}({_sas_label(t.label)});")
            out.append(f"  set x{i}.{t.name};")
        else:  # no transport file for a table of no rows: made empty, with its variables
            out.append(f"data work.{t.name}({_sas_label(t.label)});")
            for v in t.vars:  # coded text is a number in SAS, like every other variable but free text
                out.append(f"  length {v.name} {'$200' if v.type == 'str' and v.codes is None else '8'};")
            out.append("  call missing(of _all_);")
            out.append("  stop;")
        for v in t.vars:
            fmt = v.codes.name + "." if v.codes is not None else {"date": "yymmdd10.", "datetime": "e8601dt19."}.get(v.type)
            if fmt:
                out.append(f"  format {v.name} {fmt};")
            out.append(f"  label {v.name} = {_sas_text(v.label)};")
        out.append("run;")
        if counts[t.name]:
            out.append(f"libname x{i} clear;")
        out.append("")
    return "\n".join(out) + "\n"


def _sas_label(label: str) -> str:
    return f"label={_sas_text(label)}"


def load_sps(tables: list[Table]) -> str:
    out = ["* Loads this locked dataset bundle into SPSS (one dataset per table) from the Stata files,",
           "* which carry the labels, value labels and dates.",
           "* Set the folder below to the bundle's folder, then run the whole file.",
           "CD '.'.", ""]
    for t in tables:
        out.append(f"* {t.name}: {t.label}.")
        out.append(f"GET STATA FILE='{_folder(t, 'dta')}/{t.name}.dta'.")
        out.append(f"DATASET NAME {t.name} WINDOW=FRONT.")
        dates = [v.name for v in t.vars if v.type == "date"]
        if dates:
            out.append(f"FORMATS {' '.join(dates)} (SDATE10).")
        out.append("")
    out.append("DATASET ACTIVATE particip.")
    return "\n".join(out) + "\n"
