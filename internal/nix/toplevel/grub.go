package toplevel

import (
	"bytes"
	"encoding/xml"
	"fmt"
)

// GRUB is one grub-config.xml: what nixos/modules/system/boot/loader/grub
// passes install-grub.pl.
type GRUB struct {
	Config string // the file's store path
	// Devices is boot.loader.grub.devices (or a mirroredBoots entry's):
	// GRUB's BIOS core goes onto each but "nodev".
	Devices []string
	// BootPath is where grub.cfg and kernels go (/boot by default).
	BootPath string
	// EFISysMountPoint is the ESP grub-install --efi-directory names.
	EFISysMountPoint      string
	CanTouchEFIVariables  bool
	EFIInstallAsRemovable bool
	// Grub and GrubEFI are the GRUB packages for BIOS and EFI, "" when not
	// installed; Target and TargetEFI their grub-install targets.
	Grub, GrubEFI     string
	Target, TargetEFI string
}

// BIOS says whether install-grub.pl installs GRUB's BIOS core, and so onto
// which devices.
func (g *GRUB) BIOS() bool {
	if g.Grub == "" && g.Target == "" {
		return false
	}
	return len(g.BIOSDevices()) > 0
}

// BIOSDevices are the devices GRUB's BIOS core goes onto.
func (g *GRUB) BIOSDevices() []string {
	var out []string
	for _, d := range g.Devices {
		if d != "nodev" {
			out = append(out, d)
		}
	}
	return out
}

// EFI says whether install-grub.pl runs grub-install for EFI into the ESP.
func (g *GRUB) EFI() bool { return g.GrubEFI != "" || g.TargetEFI != "" }

// xmlValue is one value of Nix's builtins.toXML: <string value="..."/>,
// <bool value="true"/>, <int .../>, <path .../>, <null/>, <list>values</list>
// or <attrs><attr name="...">value</attr>...</attrs>.
type xmlValue struct {
	XMLName xml.Name
	Value   *string    `xml:"value,attr"`
	Attrs   []xmlAttr  `xml:"attr"`
	Items   []xmlValue `xml:",any"`
}

type xmlAttr struct {
	Name  string     `xml:"name,attr"`
	Value []xmlValue `xml:",any"`
}

type xmlExpr struct {
	XMLName xml.Name   `xml:"expr"`
	Value   []xmlValue `xml:",any"`
}

// ParseGRUBConfig reads a grub-config.xml (Nix's builtins.toXML of an
// attribute set).
func ParseGRUBConfig(b []byte) (*GRUB, error) {
	var e xmlExpr
	dec := xml.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(&e); err != nil {
		return nil, fmt.Errorf("not a Nix XML expression: %w", err)
	}
	if len(e.Value) != 1 || e.Value[0].XMLName.Local != "attrs" {
		return nil, fmt.Errorf("not a Nix XML expression holding one attribute set")
	}
	attrs := map[string]xmlValue{}
	for _, a := range e.Value[0].Attrs {
		if len(a.Value) != 1 {
			return nil, fmt.Errorf("attribute %q holds %d values, want 1", a.Name, len(a.Value))
		}
		attrs[a.Name] = a.Value[0]
	}
	g := &GRUB{}
	str := func(name string, dst *string) error {
		v, ok := attrs[name]
		if !ok || v.XMLName.Local == "null" {
			return nil
		}
		if v.Value == nil || (v.XMLName.Local != "string" && v.XMLName.Local != "path") {
			return fmt.Errorf("attribute %q is a %s, want a string", name, v.XMLName.Local)
		}
		*dst = *v.Value
		return nil
	}
	boolean := func(name string, dst *bool) error {
		v, ok := attrs[name]
		if !ok || v.XMLName.Local == "null" {
			return nil
		}
		if v.Value == nil || (v.XMLName.Local != "bool" && v.XMLName.Local != "string") {
			return fmt.Errorf("attribute %q is a %s, want a bool", name, v.XMLName.Local)
		}
		*dst = *v.Value == "true" || *v.Value == "1"
		return nil
	}
	for _, err := range []error{
		str("bootPath", &g.BootPath), str("efiSysMountPoint", &g.EFISysMountPoint),
		str("grub", &g.Grub), str("grubEfi", &g.GrubEFI),
		str("grubTarget", &g.Target), str("grubTargetEfi", &g.TargetEFI),
		boolean("canTouchEfiVariables", &g.CanTouchEFIVariables),
		boolean("efiInstallAsRemovable", &g.EFIInstallAsRemovable),
	} {
		if err != nil {
			return nil, err
		}
	}
	if v, ok := attrs["devices"]; ok {
		if v.XMLName.Local != "list" {
			return nil, fmt.Errorf("attribute \"devices\" is a %s, want a list", v.XMLName.Local)
		}
		for _, d := range v.Items {
			if d.XMLName.Local != "string" || d.Value == nil {
				return nil, fmt.Errorf("attribute \"devices\" holds a %s, want strings", d.XMLName.Local)
			}
			g.Devices = append(g.Devices, *d.Value)
		}
	}
	if g.EFISysMountPoint == "" {
		g.EFISysMountPoint = g.BootPath // grub.nix's default
	}
	return g, nil
}
