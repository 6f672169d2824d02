"""Regenerate orgs/northwind/bpmn/change_normal.bpmn from the pack's change_normal.bpmn: adds the security review
(user task security_review, lane security-officer) between assess and determine_authority, and
forms/change_rfc.json (+ .ui.json): the pack's RFC form with an optional cost centre. Prints the sha256 of the pack's
change_normal.bpmn for tailoring.yaml (base_sha256). Run after the pack's change_normal.bpmn or change_rfc form
changes: .venv/bin/python process_packs/iso20000/orgs/northwind/make_replacements.py"""
import hashlib, re, sys
from pathlib import Path
root = Path(__file__).resolve().parents[4]  # the repository
base = root / "bpmn/iso20000/change_normal.bpmn"
text = base.read_text(encoding="utf-8")
def sub1(old, new):
    global text
    assert text.count(old) == 1, old
    text = text.replace(old, new)
sub1("""    ISO/IEC 20000 process pack "iso20000": normal change lifecycle.""",
     """    Northwind's tailoring of the ISO/IEC 20000 pack "iso20000": normal change lifecycle with a security
    review (user task security_review, lane security-officer: an organisation role of the tailoring)
    between the impact assessment and the authorisation. Made from the pack's bpmn/iso20000/change_normal.bpmn
    (orgs/northwind/tailoring.yaml records its sha256 as base_sha256); every other element is the pack's.
    ISO/IEC 20000 process pack "iso20000": normal change lifecycle.""")
sub1("""    </bpmn:laneSet>""", """      <bpmn:lane id="lane_security_officer" name="security-officer">
        <bpmn:flowNodeRef>security_review</bpmn:flowNodeRef>
      </bpmn:lane>
    </bpmn:laneSet>""")
sub1("""      <bpmn:outgoing>flow_assess__determine_authority</bpmn:outgoing>""",
     """      <bpmn:outgoing>flow_assess__security_review</bpmn:outgoing>""")
sub1("""      <bpmn:incoming>flow_assess__determine_authority</bpmn:incoming>""",
     """      <bpmn:incoming>flow_security_review__determine_authority</bpmn:incoming>""")
sub1("""    <bpmn:scriptTask id="determine_authority" """, """    <bpmn:userTask id="security_review" name="Security review" camunda:formKey="change_security_review">
      <bpmn:documentation>Northwind: the security officer reviews the assessed change for its effect on information security controls before any authority decides (ISO/IEC 20000-1 information security management, consulted on changes).</bpmn:documentation>
      <bpmn:incoming>flow_assess__security_review</bpmn:incoming>
      <bpmn:outgoing>flow_security_review__determine_authority</bpmn:outgoing>
    </bpmn:userTask>
    <bpmn:scriptTask id="determine_authority" """)
sub1("""    <bpmn:sequenceFlow id="flow_assess__determine_authority" sourceRef="assess" targetRef="determine_authority" />""",
     """    <bpmn:sequenceFlow id="flow_assess__security_review" sourceRef="assess" targetRef="security_review" />
    <bpmn:sequenceFlow id="flow_security_review__determine_authority" sourceRef="security_review" targetRef="determine_authority" />""")
# diagram: a lane below the others, the task in it, two edges
lanes = [(int(y), int(h), int(x), int(w)) for x, y, w, h in re.findall(
    r'bpmnElement="lane_[a-z_]+" isHorizontal="true">\s*<dc:Bounds x="(\d+)" y="(\d+)" width="(\d+)" height="(\d+)"', text)]
bottom = max(y + h for y, h, x, w in lanes)
x0, w0 = lanes[0][2], lanes[0][3]
m = re.search(r'(bpmnElement="pool_change_normal" isHorizontal="true">\s*<dc:Bounds x="\d+" y="\d+" width="\d+" height=")(\d+)(")', text)
text = text[:m.start(2)] + str(int(m.group(2)) + 160) + text[m.end(2):]
sub1("""      <bpmndi:BPMNEdge id="flow_assess__determine_authority_di" bpmnElement="flow_assess__determine_authority">
        <di:waypoint x="790" y="450" />
        <di:waypoint x="840" y="450" />
      </bpmndi:BPMNEdge>""", f"""      <bpmndi:BPMNShape id="lane_security_officer_di" bpmnElement="lane_security_officer" isHorizontal="true">
        <dc:Bounds x="{x0}" y="{bottom}" width="{w0}" height="160" />
      </bpmndi:BPMNShape>
      <bpmndi:BPMNShape id="security_review_di" bpmnElement="security_review">
        <dc:Bounds x="765" y="{bottom + 40}" width="100" height="80" />
      </bpmndi:BPMNShape>
      <bpmndi:BPMNEdge id="flow_assess__security_review_di" bpmnElement="flow_assess__security_review">
        <di:waypoint x="740" y="490" />
        <di:waypoint x="740" y="{bottom + 80}" />
        <di:waypoint x="765" y="{bottom + 80}" />
      </bpmndi:BPMNEdge>
      <bpmndi:BPMNEdge id="flow_security_review__determine_authority_di" bpmnElement="flow_security_review__determine_authority">
        <di:waypoint x="865" y="{bottom + 80}" />
        <di:waypoint x="890" y="{bottom + 80}" />
        <di:waypoint x="890" y="490" />
      </bpmndi:BPMNEdge>""")
out = root / "process_packs/iso20000/orgs/northwind/bpmn/change_normal.bpmn"
out.write_text(text, encoding="utf-8")
print(hashlib.sha256(base.read_bytes()).hexdigest())

# replaced form: the pack's RFC form with Northwind's optional cost centre
import json
nw_forms = root / "process_packs/iso20000/orgs/northwind/forms"
rfc = json.loads((root / "forms/iso20000/change_rfc.json").read_text(encoding="utf-8"))
rfc["$id"] = "https://itsmflow.example/orgs/northwind/forms/change_rfc.json"
rfc["description"] = ("Northwind: the pack's request for change with the requester's cost centre (optional). "
                      + rfc["description"])
rfc["properties"]["costCentre"] = {"type": "string", "title": "Cost centre (Northwind)",
                                   "description": "Northwind cost centre that pays for the change, CC-<4 digits>.",
                                   "pattern": "^CC-[0-9]{4}$"}
(nw_forms / "change_rfc.json").write_text(json.dumps(rfc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
ui = json.loads((root / "forms/iso20000/change_rfc.ui.json").read_text(encoding="utf-8"))
order = ui.get("ui:order")
if isinstance(order, list) and "costCentre" not in order:
    order.insert(order.index("estimatedCost") + 1 if "estimatedCost" in order else len(order), "costCentre")
(nw_forms / "change_rfc.ui.json").write_text(json.dumps(ui, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
