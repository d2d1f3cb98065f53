package ova

import (
	"bytes"
	"encoding/xml"
	"fmt"
	"strconv"
)

// Namespaces of an OVF 1.x descriptor (DSP0243 1.1, DSP8023's schemas) and
// VMware's extensions.
const (
	nsOVF  = "http://schemas.dmtf.org/ovf/envelope/1"
	nsRASD = "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData"
	nsVSSD = "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData"
	nsVMW  = "http://www.vmware.com/schema/ovf"

	// DiskFormat is the Disk's ovf:format: VMware's stream-optimized VMDK,
	// the one format both importers take inside an OVA.
	DiskFormat = "http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"
)

// The descriptor's hardware, and why (each must be taken by ovftool/vSphere
// and by VirtualBox's ovfreader.cpp/ApplianceImplImport.cpp, and be driven by
// a stock NixOS).
const (
	fileID  = "file1"
	diskID  = "vmdisk1"
	network = "VM Network" // VMware's default port group, so vSphere needs no mapping; VirtualBox attaches a name it does not know as Bridged

	// vmx-13 (ESXi 6.5, Workstation 14) is the oldest hardware version that
	// every vSphere still supported creates, and has SATA AHCI (since vmx-10)
	// and EFI. VirtualBox reads the type only to see whether it contains
	// "virtualbox" (which would change how it reads E1000).
	systemType = "vmx-13"

	// CIM OS type 101 is "Linux 64-Bit": VirtualBox maps it to Linux26_x64.
	// otherLinux64Guest is the guest id every VMware hardware version knows
	// (other3x/5x/6xLinux64Guest need vmx-14 and later).
	cimOSLinux64 = "101"
	vmwOSType    = "otherLinux64Guest"

	// The disk controller: SATA AHCI. NixOS's default initrd
	// (nixos/modules/system/boot/kernel.nix, boot.initrd.availableKernelModules)
	// has ahci and sd_mod, while VMware's LSI Logic SCSI needs mptspi, added
	// only by virtualisation/vmware-guest.nix. VMware calls it
	// vmware.sata.ahci, which VirtualBox also reads as its AHCI controller
	// (ovfreader.cpp, ResourceType 20).
	rtSATA      = "20"
	sataSubType = "vmware.sata.ahci"

	// The NIC: E1000, emulated by both (VirtualBox reads E1000 from a
	// non-VirtualBox OVF as the 82545EM, VMware's model) and driven by
	// e1000, a module of every NixOS kernel, loaded by udev after the root
	// is mounted. vmxnet3 is not emulated by VirtualBox.
	rtEthernet = "10"
	nicSubType = "E1000"

	rtCPU    = "3"
	rtMemory = "4"
	rtDisk   = "17"
)

// The hardware items' InstanceIDs: small numbers, as old VirtualBox versions
// parse them as integers and refuse 0.
const (
	idCPU        = "1"
	idMemory     = "2"
	idController = "3"
	idDisk       = "4"
	idNIC        = "5"
)

// rasd is one element of a hardware Item. The CIM schema's xs:sequence
// fixes their order (alphabetical for those used here) and ovftool enforces
// it, so each item lists them in that order.
type rasd struct{ name, value string }

// Descriptor returns the OVF descriptor of m with one disk: a
// stream-optimized VMDK file of diskFileSize bytes whose virtual size is
// capacity bytes. The bytes depend on the arguments alone: no time stamps,
// no generated ids, attributes in a fixed order.
//
// For Firmware "efi" it carries VMware's firmware setting
// (vmw:Config key="firmware" value="efi"). VirtualBox reads no vmw:Config
// (its own firmware setting lives only in its vbox:Machine extension), so it
// imports every OVA with its default BIOS: an efi machine imported there
// needs `VBoxManage modifyvm <vm> --firmware efi`.
func Descriptor(m Machine, diskFileSize, capacity int64) ([]byte, error) {
	if err := m.Validate(); err != nil {
		return nil, err
	}
	if diskFileSize <= 0 {
		return nil, fmt.Errorf("ova: disk file size %d: it must be positive", diskFileSize)
	}
	if capacity <= 0 || capacity%512 != 0 {
		return nil, fmt.Errorf("ova: capacity %d: it must be a positive multiple of 512 bytes", capacity)
	}
	var b bytes.Buffer
	b.WriteString(xml.Header)
	fmt.Fprintf(&b, "<Envelope xmlns=%q xmlns:ovf=%q xmlns:rasd=%q xmlns:vmw=%q xmlns:vssd=%q>\n",
		nsOVF, nsOVF, nsRASD, nsVMW, nsVSSD)

	b.WriteString("  <References>\n")
	fmt.Fprintf(&b, "    <File ovf:href=%s ovf:id=%s ovf:size=%s/>\n", attr(m.diskName()), attr(fileID), num(diskFileSize))
	b.WriteString("  </References>\n")

	b.WriteString("  <DiskSection>\n    <Info>Virtual disk information</Info>\n")
	fmt.Fprintf(&b, "    <Disk ovf:capacity=%s ovf:capacityAllocationUnits=\"byte\" ovf:diskId=%s ovf:fileRef=%s ovf:format=%s/>\n",
		num(capacity), attr(diskID), attr(fileID), attr(DiskFormat))
	b.WriteString("  </DiskSection>\n")

	b.WriteString("  <NetworkSection>\n    <Info>The list of logical networks</Info>\n")
	fmt.Fprintf(&b, "    <Network ovf:name=%s>\n      <Description>The %s network</Description>\n    </Network>\n",
		attr(network), text(network))
	b.WriteString("  </NetworkSection>\n")

	fmt.Fprintf(&b, "  <VirtualSystem ovf:id=%s>\n    <Info>A virtual machine</Info>\n    <Name>%s</Name>\n", attr(m.Name), text(m.Name))
	fmt.Fprintf(&b, "    <OperatingSystemSection ovf:id=%s vmw:osType=%s>\n", attr(cimOSLinux64), attr(vmwOSType))
	b.WriteString("      <Info>The kind of installed guest operating system</Info>\n    </OperatingSystemSection>\n")

	b.WriteString("    <VirtualHardwareSection>\n      <Info>Virtual hardware requirements</Info>\n      <System>\n")
	for _, e := range []rasd{
		{"ElementName", "Virtual Hardware Family"},
		{"InstanceID", "0"},
		{"VirtualSystemIdentifier", m.Name},
		{"VirtualSystemType", systemType},
	} {
		fmt.Fprintf(&b, "        <vssd:%s>%s</vssd:%s>\n", e.name, text(e.value), e.name)
	}
	b.WriteString("      </System>\n")
	cpus, mem := strconv.Itoa(m.CPUs), strconv.Itoa(m.MemoryMiB)
	for _, it := range [][]rasd{{
		{"AllocationUnits", "hertz * 10^6"},
		{"Description", "Number of virtual CPUs"},
		{"ElementName", cpus + " virtual CPU(s)"},
		{"InstanceID", idCPU},
		{"ResourceType", rtCPU},
		{"VirtualQuantity", cpus},
	}, {
		{"AllocationUnits", "byte * 2^20"},
		{"Description", "Memory size"},
		{"ElementName", mem + " MB of memory"},
		{"InstanceID", idMemory},
		{"ResourceType", rtMemory},
		{"VirtualQuantity", mem},
	}, {
		{"Address", "0"},
		{"Description", "SATA controller"},
		{"ElementName", "SATA controller 0"},
		{"InstanceID", idController},
		{"ResourceSubType", sataSubType},
		{"ResourceType", rtSATA},
	}, {
		{"AddressOnParent", "0"},
		{"ElementName", "Hard disk 1"},
		{"HostResource", "ovf:/disk/" + diskID},
		{"InstanceID", idDisk},
		{"Parent", idController},
		{"ResourceType", rtDisk},
	}, {
		{"AutomaticAllocation", "true"},
		{"Connection", network},
		{"Description", "E1000 ethernet adapter on " + network},
		{"ElementName", "Network adapter 1"},
		{"InstanceID", idNIC},
		{"ResourceSubType", nicSubType},
		{"ResourceType", rtEthernet},
	}} {
		b.WriteString("      <Item>\n")
		for _, e := range it {
			fmt.Fprintf(&b, "        <rasd:%s>%s</rasd:%s>\n", e.name, text(e.value), e.name)
		}
		b.WriteString("      </Item>\n")
	}
	if m.Firmware == "efi" {
		b.WriteString("      <vmw:Config ovf:required=\"false\" vmw:key=\"firmware\" vmw:value=\"efi\"/>\n")
	}
	b.WriteString("    </VirtualHardwareSection>\n  </VirtualSystem>\n</Envelope>\n")
	return b.Bytes(), nil
}

// text escapes s as character data.
func text(s string) string {
	var b bytes.Buffer
	xml.EscapeText(&b, []byte(s)) // cannot fail: bytes.Buffer's Write does not
	return b.String()
}

// attr returns s as a quoted attribute value.
func attr(s string) string { return `"` + text(s) + `"` }

func num(n int64) string { return `"` + strconv.FormatInt(n, 10) + `"` }
