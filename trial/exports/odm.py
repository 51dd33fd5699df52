"""CDISC ODM 1.3.2 Snapshot of a locked dataset: Study/MetaDataVersion from the protocol and
ClinicalData/SubjectData/StudyEventData/FormData/ItemGroupData/ItemData from the data."""
from __future__ import annotations

import datetime as dt
from xml.sax.saxutils import escape, quoteattr  # the metadata's few values; the data's own writers below

from trial.exports.dataset import Table, field_var, short_names

DATATYPES = {"integer": "integer", "number": "float", "text": "text", "boolean": "boolean", "choice": "text"}
VAR_TYPES = {"str": "text", "int": "integer", "float": "float", "date": "date", "datetime": "datetime"}


def _oid(*parts: str) -> str:
    return ".".join(p.upper() for p in parts)


SUBJECT_TABLES = ("assessl",)  # written as the subject's visits and their forms
REFERENCE_TABLES = ("screen", "fiddraw")    # not one child's: the screening log (most never enrolled), the draws


def _item_def(oid: str, name: str, sas: str, datatype: str, label: str, units: str | None, codes=None,
              rng: tuple | None = None) -> str:
    out = [f'<ItemDef OID={quoteattr(oid)} Name={quoteattr(name)} DataType="{datatype}" SASFieldName={quoteattr(sas[:8].upper())}>',
           f'<Question><TranslatedText xml:lang="en">{escape(label)}</TranslatedText></Question>']
    if units:
        out.append(f'<MeasurementUnitRef MeasurementUnitOID={quoteattr(_unit_oid(units))}/>')
    if rng:
        lo, hi = rng
        if lo is not None:
            out.append(f'<RangeCheck Comparator="GE" SoftHard="Hard"><CheckValue>{lo}</CheckValue></RangeCheck>')
        if hi is not None:
            out.append(f'<RangeCheck Comparator="LE" SoftHard="Hard"><CheckValue>{hi}</CheckValue></RangeCheck>')
    if codes is not None:
        out.append(f'<CodeListRef CodeListOID="CL.{codes.name}"/>')
    out.append("</ItemDef>")
    return "".join(out)


def _unit_oid(units: str) -> str:
    return "MU." + "".join(ch if ch.isalnum() else "_" for ch in units.upper())


def snapshot_chunks(content: dict, tables: dict[str, Table], lock_id: int, when: dt.datetime, protocol_version: int,
                    blinded: bool):
    """The snapshot as UTF-8 chunks (a subject at a time), so that a large trial's is streamed into
    the bundle: the protocol's instruments as forms at their visits, the randomization, and every
    other table of the bundle as a repeating item group (under the event "Trial records" for a
    child's records, in ReferenceData for the screening log and the fidelity draws), each item with
    its SAS name, units and code list."""
    study = _oid("ST", content["trial"]["key"])
    mdv = f"MDV.{protocol_version}"
    records = [t for name, t in tables.items() if name not in SUBJECT_TABLES and name not in REFERENCE_TABLES]
    reference = [tables[n] for n in REFERENCE_TABLES if n in tables]
    arm_var = next(v for v in tables["particip"].vars if v.name == "arm")
    out = _study_head(content, study, lock_id, when, blinded, records + reference)
    out += _metadata(content, mdv, protocol_version, records, records + reference, arm_var, blinded)
    out.append("</Study>")
    if reference:
        out.append(f'<ReferenceData StudyOID={quoteattr(study)} MetaDataVersionOID="{mdv}">')
        for t in reference:
            _Writer(t, keep_studyid=True).groups(t.rows, out)
        out.append("</ReferenceData>")
    out.append(f'<ClinicalData StudyOID={quoteattr(study)} MetaDataVersionOID="{mdv}">')
    yield "\n".join(out).encode("utf-8")
    yield from _subjects(content, tables, records, blinded)
    yield b"\n</ClinicalData>\n</ODM>"


# --- the study: its global variables, units and metadata (one chunk) ------------------------------------

def _study_head(content: dict, study: str, lock_id: int, when: dt.datetime, blinded: bool,
                generic: list[Table]) -> list[str]:
    """The document's opening: the ODM element, the study's global variables and its units of
    measurement (the instruments' and the tables')."""
    ts = when.strftime("%Y-%m-%dT%H:%M:%S") + "+00:00"
    out = ['<?xml version="1.0" encoding="UTF-8"?>',
           (f'<ODM xmlns="http://www.cdisc.org/ns/odm/v1.3" FileType="Snapshot" Granularity="All" ODMVersion="1.3.2" '
            f'FileOID={quoteattr(f"{study}.LOCK.{lock_id}" + (".BLINDED" if blinded else ""))} CreationDateTime="{ts}" '
            f'AsOfDateTime="{ts}" Originator="TIME-A trial system" SourceSystem="trial">'),
           f'<Study OID={quoteattr(study)}>',
           "<GlobalVariables>", f"<StudyName>{escape(content['trial']['key'])}</StudyName>",
           f"<StudyDescription>{escape(content['trial']['name'])}</StudyDescription>",
           f"<ProtocolName>{escape(content['trial']['name'])} (amendment {escape(content['trial']['amendment'])})</ProtocolName>",
           "</GlobalVariables>"]
    units = {v.units for t in generic for v in t.vars if v.units}
    units |= {f["units"] for i in content["instruments"] for f in i["fields"] if f.get("units")}
    if units:
        out.append("<BasicDefinitions>")
        out += [f'<MeasurementUnit OID={quoteattr(_unit_oid(u))} Name={quoteattr(u)}><Symbol>'
                f'<TranslatedText xml:lang="en">{escape(u)}</TranslatedText></Symbol></MeasurementUnit>' for u in sorted(units)]
        out.append("</BasicDefinitions>")
    return out


def _metadata(content: dict, mdv: str, protocol_version: int, records: list[Table], generic: list[Table], arm_var,
              blinded: bool) -> list[str]:
    """The MetaDataVersion: the events, forms, item groups and items, and the code lists they use."""
    arm_item = "ARM"  # the same item in both variants (a blinded one's values are the dummy codes)
    short = short_names(content["instruments"])
    choices = {(i["key"], f["key"]): field_var(short[(i["key"], f["key"])], i, f).codes
               for i in content["instruments"] for f in i["fields"]}
    out = [f'<MetaDataVersion OID="{mdv}" Name="Protocol version {protocol_version}">']
    out += _event_defs(content, records)
    out += _form_defs(content, records)
    out += _item_group_defs(content, generic, arm_item)
    out.append(_item_def("IT.RANDOMIZATION.RANDDT", "RANDDT", "RANDDT", "date", "Date of randomization (site's calendar)",
                         None))
    out.append(_item_def(f"IT.RANDOMIZATION.{arm_item}", arm_item, arm_item, "text",
                         "Arm: DUMMY allocation (blinded)" if blinded else "Arm", None, arm_var.codes))
    out += [_item_def(_oid("IT", i["key"], f["key"]), f["key"], short[(i["key"], f["key"])], DATATYPES[f["type"]],
                      f["label"], f.get("units"), choices[(i["key"], f["key"])], (f.get("min"), f.get("max")))
            for i in content["instruments"] for f in i["fields"]]
    for t in generic:
        for v in t.vars:
            if v.name != "studyid" or t.name in REFERENCE_TABLES:
                dtype = ("integer" if v.codes.numeric else "text") if v.codes is not None else VAR_TYPES[v.type]
                out.append(_item_def(_oid("IT", t.name, v.name), v.name.upper(), v.name, dtype, v.label, v.units, v.codes))
    out += _code_lists(generic, arm_var, choices.values())
    out.append("</MetaDataVersion>")
    return out


def _event_defs(content: dict, records: list[Table]) -> list[str]:
    """The Protocol (its events in order) and each event's definition with the forms it holds: the
    randomization, each visit with its instruments and, when there are any, the trial records."""
    events = [("RANDOMIZATION", "Randomization")] + [(v["key"], v["label"]) for v in content["visits"]]
    if records:
        events.append(("DM", "Trial records: sessions, events, data management and safety"))
    out = ["<Protocol>"]
    out += [f'<StudyEventRef StudyEventOID="{_oid("SE", key)}" OrderNumber="{i}" Mandatory="No"/>'
            for i, (key, _) in enumerate(events, 1)]
    out.append("</Protocol>")
    forms_at = {v["key"]: [i for i in content["instruments"] if v["key"] in i["visits"]] for v in content["visits"]}
    out.append('<StudyEventDef OID="SE.RANDOMIZATION" Name="Randomization" Repeating="No" Type="Scheduled">'
               '<FormRef FormOID="F.RANDOMIZATION" Mandatory="Yes"/></StudyEventDef>')
    for v in content["visits"]:
        out.append(f'<StudyEventDef OID="{_oid("SE", v["key"])}" Name={quoteattr(v["label"])} Repeating="No" Type="Scheduled">')
        out += [f'<FormRef FormOID="{_oid("F", i["key"])}" Mandatory="No"/>' for i in forms_at[v["key"]]]
        out.append("</StudyEventDef>")
    if records:
        out.append('<StudyEventDef OID="SE.DM" Name="Trial records: sessions, events, data management and safety" '
                   'Repeating="No" Type="Unscheduled">')
        out += [f'<FormRef FormOID="{_oid("F", t.name)}" Mandatory="No"/>' for t in records]
        out.append("</StudyEventDef>")
    return out


def _form_defs(content: dict, records: list[Table]) -> list[str]:
    """One form each for the randomization, each instrument and each table of trial records."""
    out = [('<FormDef OID="F.RANDOMIZATION" Name="Randomization" Repeating="No">'
            '<ItemGroupRef ItemGroupOID="IG.RANDOMIZATION" Mandatory="Yes"/></FormDef>')]
    out += [f'<FormDef OID="{_oid("F", i["key"])}" Name={quoteattr(i["label"])} Repeating="No">'
            f'<ItemGroupRef ItemGroupOID="{_oid("IG", i["key"])}" Mandatory="Yes"/></FormDef>'
            for i in content["instruments"]]
    out += [f'<FormDef OID="{_oid("F", t.name)}" Name={quoteattr(t.label)} Repeating="No">'
            f'<ItemGroupRef ItemGroupOID="{_oid("IG", t.name)}" Mandatory="No"/></FormDef>' for t in records]
    return out


def _item_group_defs(content: dict, generic: list[Table], arm_item: str) -> list[str]:
    """The randomization's item group, one per instrument (its fields), and one repeating group per
    table (its variables; the study id is the subject, but for the reference tables)."""
    out = [('<ItemGroupDef OID="IG.RANDOMIZATION" Name="Randomization" Repeating="No" SASDatasetName="RAND">'
            '<ItemRef ItemOID="IT.RANDOMIZATION.RANDDT" Mandatory="Yes"/>'
            f'<ItemRef ItemOID="IT.RANDOMIZATION.{arm_item}" Mandatory="Yes"/></ItemGroupDef>')]
    for i in content["instruments"]:
        out.append(f'<ItemGroupDef OID="{_oid("IG", i["key"])}" Name={quoteattr(i["label"])} Repeating="No" '
                   f'SASDatasetName={quoteattr(i["key"][:8].upper())}>')
        out += [f'<ItemRef ItemOID="{_oid("IT", i["key"], f["key"])}" Mandatory="{"Yes" if f["required"] else "No"}"/>'
                for f in i["fields"]]
        out.append("</ItemGroupDef>")
    for t in generic:
        out.append(f'<ItemGroupDef OID="{_oid("IG", t.name)}" Name={quoteattr(t.label)} Repeating="Yes" '
                   f'SASDatasetName={quoteattr(t.name.upper())}>')
        out += [f'<ItemRef ItemOID="{_oid("IT", t.name, v.name)}" Mandatory="No"/>' for v in t.vars
                if v.name != "studyid" or t.name in REFERENCE_TABLES]
        out.append("</ItemGroupDef>")
    return out


def _code_lists(generic: list[Table], arm_var, choices) -> list[str]:
    """Every code list the items use, by name (the first of a name is the one written)."""
    codelists: dict[str, object] = {}
    for t in generic:
        for v in t.vars:
            if v.codes is not None:
                codelists.setdefault(v.codes.name, v.codes)
    codelists.setdefault(arm_var.codes.name, arm_var.codes)
    for choice in choices:
        if choice is not None:
            codelists.setdefault(choice.name, choice)
    out = []
    for name in sorted(codelists):
        c = codelists[name]
        out.append(f'<CodeList OID="CL.{name}" Name={quoteattr(name)} DataType="{"integer" if c.numeric else "text"}">')
        out += [f'<CodeListItem CodedValue={quoteattr(str(k))}><Decode><TranslatedText xml:lang="en">{escape(m)}'
                "</TranslatedText></Decode></CodeListItem>" for k, m in c.items]
        out.append("</CodeList>")
    return out


# --- the clinical data: a chunk per subject ---------------------------------------------------------------

def _subjects(content: dict, tables: dict[str, Table], records: list[Table], blinded: bool):
    """Each child's SubjectData as a chunk: the randomization, the visits' forms and the trial
    records (in the order of ``records``)."""
    dm_rows = _records_by_subject(tables, records)
    writers = {t.name: _Writer(t) for t in records}
    by_subject = _assessments_by_subject(tables["assessl"])
    visit_order = [v["key"] for v in content["visits"]]
    fields_order = {i["key"]: [f["key"] for f in i["fields"]] for i in content["instruments"]}
    part = tables["particip"]
    col = {v.name: n for n, v in enumerate(part.vars)}
    arm_col, arm_item = col["arm"], "ARM"
    for r in part.rows:
        sid = r[col["studyid"]]
        out = [f"\n<SubjectData SubjectKey={quoteattr(sid)}>"]
        if r[col["randdt"]]:
            out.append('<StudyEventData StudyEventOID="SE.RANDOMIZATION"><FormData FormOID="F.RANDOMIZATION">'
                       '<ItemGroupData ItemGroupOID="IG.RANDOMIZATION">'
                       f'<ItemData ItemOID="IT.RANDOMIZATION.RANDDT" Value="{r[col["randdt"]]}"/>'
                       f'<ItemData ItemOID="IT.RANDOMIZATION.{arm_item}" Value={quoteattr(str(r[arm_col]))}/>'
                       "</ItemGroupData></FormData></StudyEventData>")
        _visit_data(by_subject.get(sid, {}), visit_order, fields_order, out)
        if sid in dm_rows:
            out.append('<StudyEventData StudyEventOID="SE.DM">')
            for name in (t.name for t in records if t.name in dm_rows[sid]):
                out.append(f'<FormData FormOID="{_oid("F", name)}">')
                writers[name].groups(dm_rows[sid][name], out)
                out.append("</FormData>")
            out.append("</StudyEventData>")
        out.append("</SubjectData>")
        yield "\n".join(out).encode("utf-8")


def _records_by_subject(tables: dict[str, Table], records: list[Table]) -> dict[str, dict[str, list]]:
    """The trial records' rows by subject, then by table (a query thread's steps belong to the
    subject of their query)."""
    dm_rows: dict[str, dict[str, list]] = {}
    subject_of_query = {}
    if "queries" in tables:
        qv = [v.name for v in tables["queries"].vars]
        subject_of_query = {r[qv.index("qid")]: r[qv.index("studyid")] for r in tables["queries"].rows}
    for t in records:
        names = [v.name for v in t.vars]
        if "studyid" in names:
            at = names.index("studyid")
            for r in t.rows:
                dm_rows.setdefault(r[at], {}).setdefault(t.name, []).append(r)
        else:
            at = names.index("qid")
            for r in t.rows:
                dm_rows.setdefault(subject_of_query[r[at]], {}).setdefault(t.name, []).append(r)
    return dm_rows


def _assessments_by_subject(wide: Table) -> dict[str, dict[str, dict[str, list]]]:
    """The assessments' long rows by subject, visit and instrument: (field, value) pairs."""
    by_subject: dict[str, dict[str, dict[str, list]]] = {}
    lc = {v.name: n for n, v in enumerate(wide.vars)}
    for r in wide.rows:
        by_subject.setdefault(r[lc["studyid"]], {}).setdefault(r[lc["visit"]], {}).setdefault(r[lc["instr"]], []).append(
            (r[lc["item"]], r[lc["value"]]))
    return by_subject


def _visit_data(visits: dict[str, dict[str, list]], visit_order: list[str], fields_order: dict[str, list[str]],
                out: list) -> None:
    """A subject's visits (in the protocol's order), each with its instruments' forms (by key) and
    their values (in the instrument's order of fields), appended to ``out``."""
    for vk in visit_order:
        if vk not in visits:
            continue
        out.append(f'<StudyEventData StudyEventOID="{_oid("SE", vk)}">')
        for ik in sorted(visits[vk]):
            values = dict(visits[vk][ik])
            out.append(f'<FormData FormOID="{_oid("F", ik)}"><ItemGroupData ItemGroupOID="{_oid("IG", ik)}">')
            for fk in fields_order[ik]:
                if fk in values:
                    v = values[fk]
                    text = str(int(v)) if float(v).is_integer() else repr(v)
                    out.append(f'<ItemData ItemOID="{_oid("IT", ik, fk)}" Value="{text}"/>')
            out.append("</ItemGroupData></FormData>")
        out.append("</StudyEventData>")


_ESCAPE = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "\n": "&#10;", "\r": "&#13;",
                         "\t": "&#9;"})


def _text(x) -> str:
    """A text value as an attribute value between double quotes."""
    return str(x).translate(_ESCAPE)


def _number(x) -> str:
    if isinstance(x, float):
        return str(int(x)) if x.is_integer() else repr(x)
    if isinstance(x, str):  # (a number column holding text: escaped as text, never written raw)
        return _text(x)
    return str(x)


def _plain(x) -> str:
    return x  # an ISO date or date-time: nothing in it to escape


class _Writer:
    """The ItemGroupData of one table's rows: each item's text is worked out once per distinct
    value of its variable (a child's id, a day, a code) and then reused, so that the millions of
    items of an unblinded snapshot cost a look-up each."""

    def __init__(self, t: Table, keep_studyid: bool = False):
        self.open = f'<ItemGroupData ItemGroupOID="{_oid("IG", t.name)}" ItemGroupRepeatKey="'
        self.items = [(i, {}, f'<ItemData ItemOID="{_oid("IT", t.name, v.name)}" Value="',
                       _plain if v.type in ("date", "datetime") and v.codes is None else
                       _number if v.type in ("int", "float") else _text)
                      for i, v in enumerate(t.vars) if keep_studyid or v.name != "studyid"]

    def groups(self, rows, out: list) -> None:
        """Append each row's ItemGroupData (numbered from 1) to ``out``."""
        items, open_ = self.items, self.open
        for n, row in enumerate(rows, 1):
            parts = [open_, str(n), '">']
            for i, known, head, write in items:
                x = row[i]
                if x is not None:
                    item = known.get(x)
                    if item is None:
                        item = known[x] = f'{head}{write(x)}"/>'
                    parts.append(item)
            parts.append("</ItemGroupData>")
            out.append("".join(parts))
