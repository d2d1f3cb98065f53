// Package version holds the plugin's version, in Packer's convention.
package version

import "github.com/hashicorp/packer-plugin-sdk/version"

var (
	// Version is the main version number that is being run at the moment.
	Version = "0.1.0"
	// VersionPrerelease is a pre-release marker; "dev" for development builds.
	VersionPrerelease = "dev"
	// VersionMetadata is extra build-time metadata, such as a commit.
	VersionMetadata = ""
	// PluginVersion is used by the plugin set to report its version to Packer.
	PluginVersion = version.NewPluginVersion(Version, VersionPrerelease, VersionMetadata)
)
