"""CDISC ODM 1.3.2 Snapshot of a locked dataset: Study/MetaDataVersion from the protocol and
ClinicalData/SubjectData/StudyEventData/FormData/ItemGroupData/ItemData from the data."""
from __future__ import annotations

import datetime as dt
from xml.sax.saxutils import escape, quoteattr

from trial.exports.dataset import DM_TABLES, Table

DATATYPES = {"integer": "integer", "number": "float", "text": "text", "boolean": "boolean", "choice": "text"}
VAR_TYPES = {"str": "text", "int": "integer", "float": "float", "date": "date", "datetime": "datetime"}


def _oid(*parts: str) -> str:
    return ".".join(p.upper() for p in parts)


def snapshot(content: dict, tables: dict[str, Table], lock_id: int, when: dt.datetime, protocol_version: int,
             blinded: bool) -> bytes:
    study = _oid("ST", content["trial"]["key"])
    mdv = f"MDV.{protocol_version}"
    ts = when.strftime("%Y-%m-%dT%H:%M:%S") + "+00:00"
    out = ['<?xml version="1.0" encoding="UTF-8"?>',
           f'<ODM xmlns="http://www.cdisc.org/ns/odm/v1.3" FileType="Snapshot" Granularity="All" ODMVersion="1.3.2" '
           f'FileOID={quoteattr(f"{study}.LOCK.{lock_id}" + (".BLINDED" if blinded else ""))} CreationDateTime="{ts}" '
           f'AsOfDateTime="{ts}" Originator="TIME-A trial system" SourceSystem="trial">',
           f'<Study OID={quoteattr(study)}>',
           "<GlobalVariables>", f"<StudyName>{escape(content['trial']['key'])}</StudyName>",
           f"<StudyDescription>{escape(content['trial']['name'])}</StudyDescription>",
           f"<ProtocolName>{escape(content['trial']['name'])} (amendment {escape(content['trial']['amendment'])})</ProtocolName>",
           "</GlobalVariables>",
           f'<MetaDataVersion OID="{mdv}" Name="Protocol version {protocol_version}">', "<Protocol>"]
    events = [("RANDOMIZATION", "Randomization")] + [(v["key"], v["label"]) for v in content["visits"]]
    dm = [tables[name] for name in DM_TABLES if name in tables]
    if dm:
        events.append(("DM", "Data management and safety"))
    for i, (key, _) in enumerate(events, 1):
        out.append(f'<StudyEventRef StudyEventOID="{_oid("SE", key)}" OrderNumber="{i}" Mandatory="No"/>')
    out.append("</Protocol>")
    forms_at = {v["key"]: [i for i in content["instruments"] if v["key"] in i["visits"]] for v in content["visits"]}
    out.append('<StudyEventDef OID="SE.RANDOMIZATION" Name="Randomization" Repeating="No" Type="Scheduled">'
               '<FormRef FormOID="F.RANDOMIZATION" Mandatory="Yes"/></StudyEventDef>')
    for v in content["visits"]:
        out.append(f'<StudyEventDef OID="{_oid("SE", v["key"])}" Name={quoteattr(v["label"])} Repeating="No" Type="Scheduled">')
        out += [f'<FormRef FormOID="{_oid("F", i["key"])}" Mandatory="No"/>' for i in forms_at[v["key"]]]
        out.append("</StudyEventDef>")
    if dm:
        out.append('<StudyEventDef OID="SE.DM" Name="Data management and safety" Repeating="No" Type="Unscheduled">')
        out += [f'<FormRef FormOID="{_oid("F", t.name)}" Mandatory="No"/>' for t in dm]
        out.append("</StudyEventDef>")
    out.append('<FormDef OID="F.RANDOMIZATION" Name="Randomization" Repeating="No">'
               '<ItemGroupRef ItemGroupOID="IG.RANDOMIZATION" Mandatory="Yes"/></FormDef>')
    for t in dm:
        out.append(f'<FormDef OID="{_oid("F", t.name)}" Name={quoteattr(t.label)} Repeating="No">'
                   f'<ItemGroupRef ItemGroupOID="{_oid("IG", t.name)}" Mandatory="No"/></FormDef>')
    for i in content["instruments"]:
        out.append(f'<FormDef OID="{_oid("F", i["key"])}" Name={quoteattr(i["label"])} Repeating="No">'
                   f'<ItemGroupRef ItemGroupOID="{_oid("IG", i["key"])}" Mandatory="Yes"/></FormDef>')
    arm_item = "ARMCD" if blinded else "ARM"
    out.append('<ItemGroupDef OID="IG.RANDOMIZATION" Name="Randomization" Repeating="No">'
               f'<ItemRef ItemOID="IT.RANDOMIZATION.RANDDT" Mandatory="Yes"/>'
               f'<ItemRef ItemOID="IT.RANDOMIZATION.{arm_item}" Mandatory="Yes"/></ItemGroupDef>')
    for i in content["instruments"]:
        out.append(f'<ItemGroupDef OID="{_oid("IG", i["key"])}" Name={quoteattr(i["label"])} Repeating="No">')
        out += [f'<ItemRef ItemOID="{_oid("IT", i["key"], f["key"])}" Mandatory="{"Yes" if f["required"] else "No"}"/>'
                for f in i["fields"]]
        out.append("</ItemGroupDef>")
    for t in dm:  # one repeating item group per table, its variables as items (the study id is the subject)
        out.append(f'<ItemGroupDef OID="{_oid("IG", t.name)}" Name={quoteattr(t.label)} Repeating="Yes">')
        out += [f'<ItemRef ItemOID="{_oid("IT", t.name, v.name)}" Mandatory="No"/>' for v in t.vars if v.name != "studyid"]
        out.append("</ItemGroupDef>")
    out.append('<ItemDef OID="IT.RANDOMIZATION.RANDDT" Name="RANDDT" DataType="date">'
               '<Question><TranslatedText xml:lang="en">Date of randomization (UTC)</TranslatedText></Question></ItemDef>')
    out.append(f'<ItemDef OID="IT.RANDOMIZATION.{arm_item}" Name="{arm_item}" DataType="text" Length="32">'
               f'<Question><TranslatedText xml:lang="en">{"Arm code (blinded)" if blinded else "Arm"}</TranslatedText></Question></ItemDef>')
    for i in content["instruments"]:
        for f in i["fields"]:
            out.append(f'<ItemDef OID="{_oid("IT", i["key"], f["key"])}" Name={quoteattr(f["key"])} '
                       f'DataType="{DATATYPES[f["type"]]}"><Question><TranslatedText xml:lang="en">{escape(f["label"])}'
                       "</TranslatedText></Question>")
            if f.get("min") is not None:
                out.append(f'<RangeCheck Comparator="GE" SoftHard="Hard"><CheckValue>{f["min"]}</CheckValue></RangeCheck>')
            if f.get("max") is not None:
                out.append(f'<RangeCheck Comparator="LE" SoftHard="Hard"><CheckValue>{f["max"]}</CheckValue></RangeCheck>')
            out.append("</ItemDef>")
    for t in dm:
        for v in t.vars:
            if v.name != "studyid":
                out.append(f'<ItemDef OID="{_oid("IT", t.name, v.name)}" Name={quoteattr(v.name.upper())} '
                           f'DataType="{VAR_TYPES[v.type]}"><Question><TranslatedText xml:lang="en">{escape(v.label)}'
                           "</TranslatedText></Question></ItemDef>")
    out += ["</MetaDataVersion>", "</Study>", f'<ClinicalData StudyOID={quoteattr(study)} MetaDataVersionOID="{mdv}">']
    dm_rows: dict[str, dict[str, list]] = {}
    subject_of_query = {}
    if "queries" in tables:
        qv = [v.name for v in tables["queries"].vars]
        subject_of_query = {r[qv.index("qid")]: r[qv.index("studyid")] for r in tables["queries"].rows}
    for t in dm:
        names = [v.name for v in t.vars]
        for r in t.rows:  # a thread's steps belong to the subject of their query
            sid = r[names.index("studyid")] if "studyid" in names else subject_of_query[r[names.index("qid")]]
            dm_rows.setdefault(sid, {}).setdefault(t.name, []).append(r)
    dm_by_name = {t.name: t for t in dm}
    part = tables["particip"]
    col = {v.name: n for n, v in enumerate(part.vars)}
    arm_col = col["armcd" if blinded else "arm"]
    wide = tables["assessl"]
    by_subject: dict[str, dict[str, dict[str, list]]] = {}
    lc = {v.name: n for n, v in enumerate(wide.vars)}
    for r in wide.rows:
        by_subject.setdefault(r[lc["studyid"]], {}).setdefault(r[lc["visit"]], {}).setdefault(r[lc["instr"]], []).append(
            (r[lc["item"]], r[lc["value"]]))
    visit_order = [v["key"] for v in content["visits"]]
    fields_order = {i["key"]: [f["key"] for f in i["fields"]] for i in content["instruments"]}
    for r in part.rows:
        sid = r[col["studyid"]]
        out.append(f"<SubjectData SubjectKey={quoteattr(sid)}>")
        if r[col["randdt"]]:
            out.append('<StudyEventData StudyEventOID="SE.RANDOMIZATION"><FormData FormOID="F.RANDOMIZATION">'
                       '<ItemGroupData ItemGroupOID="IG.RANDOMIZATION">'
                       f'<ItemData ItemOID="IT.RANDOMIZATION.RANDDT" Value="{r[col["randdt"]]}"/>'
                       f'<ItemData ItemOID="IT.RANDOMIZATION.{arm_item}" Value={quoteattr(str(r[arm_col]))}/>'
                       "</ItemGroupData></FormData></StudyEventData>")
        visits = by_subject.get(sid, {})
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
        if sid in dm_rows:
            out.append('<StudyEventData StudyEventOID="SE.DM">')
            for name, rows in dm_rows[sid].items():
                t = dm_by_name[name]
                out.append(f'<FormData FormOID="{_oid("F", name)}">')
                for n, row in enumerate(rows, 1):
                    out.append(f'<ItemGroupData ItemGroupOID="{_oid("IG", name)}" ItemGroupRepeatKey="{n}">')
                    out += [f'<ItemData ItemOID="{_oid("IT", name, v.name)}" Value={quoteattr(str(x))}/>'
                            for v, x in zip(t.vars, row) if v.name != "studyid" and x is not None]
                    out.append("</ItemGroupData>")
                out.append("</FormData>")
            out.append("</StudyEventData>")
        out.append("</SubjectData>")
    out += ["</ClinicalData>", "</ODM>"]
    return "\n".join(out).encode("utf-8")
