package ova

import (
	"bytes"
	"encoding/xml"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// The DMTF's XSD for OVF 1.x (DSP8023) and the CIM schemas it imports are
// not available offline here, so the descriptor is not schema-validated:
// xmllint checks it is well-formed, and checkDescriptor checks the DSP0243
// and CIM rules the importers depend on, on the parsed tree.

var testMachines = []Machine{
	{Name: "nixos", CPUs: 1, MemoryMiB: 64, Firmware: "bios"},
	{Name: "web-01_prod.v2", CPUs: 4, MemoryMiB: 4096, Firmware: "efi"},
	{Name: strings.Repeat("n", MaxNameLen), CPUs: MaxCPUs, MemoryMiB: MaxMemoryMiB, Firmware: "bios"},
}

func TestDescriptorWellFormed(t *testing.T) {
	xmllint := lookPath(t, "xmllint")
	dir := t.TempDir()
	for i, m := range testMachines {
		desc, err := Descriptor(m, 123456, 3<<20)
		if err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(dir, strconv.Itoa(i)+".ovf")
		if err := os.WriteFile(path, desc, 0o644); err != nil {
			t.Fatal(err)
		}
		if out, err := exec.Command(xmllint, "--noout", path).CombinedOutput(); err != nil {
			t.Errorf("%s: xmllint: %v\n%s", m.Name, err, out)
		}
	}
}

func TestDescriptorRules(t *testing.T) {
	for _, m := range testMachines {
		for _, sizes := range [][2]int64{{512, 512}, {123456, 3 << 20}, {5 << 30, 64 << 30}} {
			desc, err := Descriptor(m, sizes[0], sizes[1])
			if err != nil {
				t.Fatal(err)
			}
			checkDescriptor(t, desc, m, sizes[0], sizes[1])
		}
	}
}

func TestDescriptorRefuses(t *testing.T) {
	m := testMachines[0]
	for _, tc := range []struct {
		size, capacity int64
		want           string
	}{
		{0, 512, "disk file size"},
		{512, 0, "capacity"},
		{512, 1000, "multiple of 512"},
	} {
		if _, err := Descriptor(m, tc.size, tc.capacity); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Descriptor(size %d, capacity %d) = %v, want an error naming %q", tc.size, tc.capacity, err, tc.want)
		}
	}
}

// node is any XML element, its attributes and children in document order.
type node struct {
	XMLName xml.Name
	Attrs   []xml.Attr `xml:",any,attr"`
	Nodes   []node     `xml:",any"`
	Text    string     `xml:",chardata"`
}

func (n *node) attr(space, local string) (string, bool) {
	for _, a := range n.Attrs {
		if a.Name.Space == space && a.Name.Local == local {
			return a.Value, true
		}
	}
	return "", false
}

// children returns n's child elements named local in namespace space.
func (n *node) children(space, local string) []*node {
	var out []*node
	for i := range n.Nodes {
		if c := &n.Nodes[i]; c.XMLName.Space == space && c.XMLName.Local == local {
			out = append(out, c)
		}
	}
	return out
}

// one returns the single child named local in space, failing otherwise.
func (n *node) one(t *testing.T, space, local string) *node {
	t.Helper()
	c := n.children(space, local)
	if len(c) != 1 {
		t.Fatalf("<%s> has %d <%s> children, want 1", n.XMLName.Local, len(c), local)
	}
	return c[0]
}

func (n *node) must(t *testing.T, space, local string) string {
	t.Helper()
	v, ok := n.attr(space, local)
	if !ok {
		t.Fatalf("<%s> has no %s attribute", n.XMLName.Local, local)
	}
	return v
}

// rasdOf returns an Item's elements by name, after checking they are all in
// the RASD namespace, in the CIM schema's (alphabetical) order, and that the
// ones the schema requires are there.
func rasdOf(t *testing.T, item *node) map[string]string {
	t.Helper()
	var names []string
	fields := map[string]string{}
	for _, c := range item.Nodes {
		if c.XMLName.Space != nsRASD {
			t.Errorf("Item child <%s> is in namespace %q, not RASD's", c.XMLName.Local, c.XMLName.Space)
		}
		names = append(names, c.XMLName.Local)
		fields[c.XMLName.Local] = c.Text
	}
	if !slices.IsSorted(names) || len(fields) != len(names) {
		t.Errorf("Item elements %v: not in the CIM schema's order, or repeated", names)
	}
	for _, req := range []string{"ElementName", "InstanceID", "ResourceType"} {
		if fields[req] == "" {
			t.Errorf("Item %v has no %s", names, req)
		}
	}
	return fields
}

// checkDescriptor parses desc and checks what DSP0243 and the importers need
// of the descriptor of m with a disk file of fileSize bytes and capacity.
func checkDescriptor(t *testing.T, desc []byte, m Machine, fileSize, capacity int64) {
	t.Helper()
	if !bytes.HasPrefix(desc, []byte(`<?xml version="1.0" encoding="UTF-8"?>`)) {
		t.Errorf("descriptor does not start with an XML declaration")
	}
	var env node
	if err := xml.Unmarshal(desc, &env); err != nil {
		t.Fatalf("descriptor does not parse: %v", err)
	}
	if env.XMLName != (xml.Name{Space: nsOVF, Local: "Envelope"}) {
		t.Fatalf("root is %v, want OVF 1.x's Envelope", env.XMLName)
	}

	// Envelope: References, then the sections, then the content.
	var order []string
	for _, c := range env.Nodes {
		if c.XMLName.Space != nsOVF {
			t.Errorf("Envelope child <%s> in namespace %q", c.XMLName.Local, c.XMLName.Space)
		}
		order = append(order, c.XMLName.Local)
	}
	if want := []string{"References", "DiskSection", "NetworkSection", "VirtualSystem"}; !slices.Equal(order, want) {
		t.Errorf("Envelope children %v, want %v", order, want)
	}

	// Info comes first in every section and in the content.
	var walk func(n *node)
	walk = func(n *node) {
		if strings.HasSuffix(n.XMLName.Local, "Section") || n.XMLName.Local == "VirtualSystem" {
			if len(n.Nodes) == 0 || n.Nodes[0].XMLName != (xml.Name{Space: nsOVF, Local: "Info"}) || n.Nodes[0].Text == "" {
				t.Errorf("<%s> does not start with a non-empty <Info>", n.XMLName.Local)
			}
		}
		for i := range n.Nodes {
			walk(&n.Nodes[i])
		}
	}
	walk(&env)

	file := env.one(t, nsOVF, "References").one(t, nsOVF, "File")
	if got := file.must(t, nsOVF, "href"); got != m.Name+"-disk1.vmdk" {
		t.Errorf("File href %q, want %q", got, m.Name+"-disk1.vmdk")
	}
	if got := file.must(t, nsOVF, "size"); got != strconv.FormatInt(fileSize, 10) {
		t.Errorf("File size %s, want %d", got, fileSize)
	}

	disk := env.one(t, nsOVF, "DiskSection").one(t, nsOVF, "Disk")
	if got, want := disk.must(t, nsOVF, "fileRef"), file.must(t, nsOVF, "id"); got != want {
		t.Errorf("Disk fileRef %q does not name the File (id %q)", got, want)
	}
	if got := disk.must(t, nsOVF, "capacity"); got != strconv.FormatInt(capacity, 10) {
		t.Errorf("Disk capacity %s, want %d", got, capacity)
	}
	if got := disk.must(t, nsOVF, "capacityAllocationUnits"); got != "byte" {
		t.Errorf("Disk capacityAllocationUnits %q, want byte", got)
	}
	if got := disk.must(t, nsOVF, "format"); got != DiskFormat {
		t.Errorf("Disk format %q, want %q", got, DiskFormat)
	}

	netName := env.one(t, nsOVF, "NetworkSection").one(t, nsOVF, "Network").must(t, nsOVF, "name")

	vs := env.one(t, nsOVF, "VirtualSystem")
	if got := vs.must(t, nsOVF, "id"); got != m.Name {
		t.Errorf("VirtualSystem id %q, want %q", got, m.Name)
	}
	if got := vs.one(t, nsOVF, "Name").Text; got != m.Name {
		t.Errorf("VirtualSystem Name %q, want %q", got, m.Name)
	}
	osSec := vs.one(t, nsOVF, "OperatingSystemSection")
	if got := osSec.must(t, nsOVF, "id"); got != "101" {
		t.Errorf("OperatingSystemSection id %s, want 101 (CIM's Linux 64-Bit)", got)
	}
	if got := osSec.must(t, nsVMW, "osType"); got != "otherLinux64Guest" {
		t.Errorf("vmw:osType %q", got)
	}

	hw := vs.one(t, nsOVF, "VirtualHardwareSection")
	sys := hw.one(t, nsOVF, "System")
	ids := map[string]string{}
	for _, c := range sys.Nodes {
		if c.XMLName.Space != nsVSSD {
			t.Errorf("System child <%s> not in VSSD's namespace", c.XMLName.Local)
		}
		ids[c.XMLName.Local] = c.Text
	}
	if ids["VirtualSystemType"] != "vmx-13" || ids["VirtualSystemIdentifier"] != m.Name {
		t.Errorf("System %v", ids)
	}
	seen := map[string]bool{ids["InstanceID"]: true}
	byType := map[string][]map[string]string{}
	for _, item := range hw.children(nsOVF, "Item") {
		f := rasdOf(t, item)
		if seen[f["InstanceID"]] {
			t.Errorf("InstanceID %q is used twice", f["InstanceID"])
		}
		seen[f["InstanceID"]] = true
		byType[f["ResourceType"]] = append(byType[f["ResourceType"]], f)
	}
	only := func(rt, what string) map[string]string {
		t.Helper()
		if len(byType[rt]) != 1 {
			t.Fatalf("%d %s items (ResourceType %s), want 1", len(byType[rt]), what, rt)
		}
		return byType[rt][0]
	}
	if cpu := only("3", "CPU"); cpu["VirtualQuantity"] != strconv.Itoa(m.CPUs) {
		t.Errorf("CPU VirtualQuantity %s, want %d", cpu["VirtualQuantity"], m.CPUs)
	}
	mem := only("4", "memory")
	if mem["VirtualQuantity"] != strconv.Itoa(m.MemoryMiB) || mem["AllocationUnits"] != "byte * 2^20" {
		t.Errorf("memory %s in %q, want %d in byte * 2^20", mem["VirtualQuantity"], mem["AllocationUnits"], m.MemoryMiB)
	}
	ctl := only("20", "SATA controller")
	if ctl["ResourceSubType"] != "vmware.sata.ahci" {
		t.Errorf("controller subtype %q", ctl["ResourceSubType"])
	}
	hd := only("17", "disk")
	if want := "ovf:/disk/" + disk.must(t, nsOVF, "diskId"); hd["HostResource"] != want {
		t.Errorf("disk HostResource %q does not name the Disk (%q)", hd["HostResource"], want)
	}
	if hd["Parent"] != ctl["InstanceID"] || hd["AddressOnParent"] != "0" {
		t.Errorf("disk on parent %q at %q, want the controller %q at 0", hd["Parent"], hd["AddressOnParent"], ctl["InstanceID"])
	}
	nic := only("10", "NIC")
	if nic["Connection"] != netName || nic["ResourceSubType"] != "E1000" {
		t.Errorf("NIC %q on %q, want E1000 on the NetworkSection's %q", nic["ResourceSubType"], nic["Connection"], netName)
	}
	if len(byType) != 5 {
		t.Errorf("item types %v, want CPU, memory, controller, disk, NIC", byType)
	}

	var firmware []string
	for _, c := range hw.children(nsVMW, "Config") {
		if c.must(t, nsVMW, "key") == "firmware" {
			firmware = append(firmware, c.must(t, nsVMW, "value"))
			if req, _ := c.attr(nsOVF, "required"); req != "false" {
				t.Errorf("firmware Config ovf:required %q, want false", req)
			}
		}
	}
	want := []string(nil)
	if m.Firmware == "efi" {
		want = []string{"efi"}
	}
	if !slices.Equal(firmware, want) {
		t.Errorf("Firmware %s: firmware Config %v, want %v", m.Firmware, firmware, want)
	}
}

func lookPath(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Skipf("%s is not installed: %v", name, err)
	}
	return p
}
