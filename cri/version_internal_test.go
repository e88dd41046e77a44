package cri

import "testing"

// kubelet shows a runtime version it cannot parse as semantic as
// "Unknown": every build reports one it can.
func TestSemanticVersion(t *testing.T) {
	for in, want := range map[string]string{
		"v1.2.3":               "1.2.3",
		"1.2.3":                "1.2.3",
		"v1.2.3-4-gabcdef0":    "1.2.3-4-gabcdef0",
		"v1.2.3-rc.1+build.5":  "1.2.3-rc.1+build.5",
		"0.1.0-dev":            "0.1.0-dev",
		"232443d":              "0.0.0-dev+232443d",
		"232443d-dirty":        "0.0.0-dev+232443d-dirty",
		"v1.2-3-gabc":          "0.0.0-dev+v1.2-3-gabc",
		"test":                 "0.0.0-dev+test",
		"":                     "0.0.0-dev",
		"weird/branch name++!": "0.0.0-dev+weird.branch.name",
	} {
		got := semanticVersion(in)
		if got != want {
			t.Errorf("semanticVersion(%q) = %q, want %q", in, got, want)
		}
		if !semVer.MatchString(got) {
			t.Errorf("semanticVersion(%q) = %q is not semantic", in, got)
		}
	}
}
