// Command misbehave is a CNI plugin for the end-to-end tests that misbehaves on purpose, chosen by the name it
// is installed under (argv[0]'s base name). It is a static binary, not a shell script, so that it runs where
// cniplug runs: the managed plugin's rootfs has no shell.
//
//	e2e-failer   ADD fails with its own message; DEL succeeds.
//	e2e-slowdel  ADD answers an empty result; DEL takes 3 s (under the suite's 5 s --cni-timeout).
//	e2e-hanger   ADD never answers (cniplug must kill it at its deadline); DEL succeeds.
//	e2e-st*      STATUS fails ("<name>: backing daemon is down", code 50) while <name>.notready exists next to
//	             the binary; ADD answers an empty result.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"
)

const versions = `"supportedVersions":["0.3.0","0.3.1","0.4.0","1.0.0","1.1.0"]`

func main() {
	self := filepath.Base(os.Args[0])
	cmd := os.Getenv("CNI_COMMAND")
	if cmd == "VERSION" {
		fmt.Printf(`{"cniVersion":"1.1.0",%s}`+"\n", versions)
		return
	}
	// Results carry the configuration's version, as libcni expects.
	var conf struct {
		CNIVersion string `json:"cniVersion"`
	}
	if cmd == "ADD" || cmd == "DEL" {
		b, _ := io.ReadAll(os.Stdin)
		_ = json.Unmarshal(b, &conf)
	}
	switch {
	case self == "e2e-failer" && cmd == "ADD":
		fmt.Println(`{"cniVersion":"1.0.0","code":999,"msg":"e2e-failer refuses ADD on purpose"}`)
		os.Exit(1)
	case self == "e2e-slowdel" && cmd == "DEL":
		time.Sleep(3 * time.Second)
	case self == "e2e-hanger" && cmd == "ADD":
		time.Sleep(300 * time.Second)
	case strings.HasPrefix(self, "e2e-st") && cmd == "STATUS":
		if _, err := os.Stat(filepath.Join(filepath.Dir(os.Args[0]), self+".notready")); err == nil {
			fmt.Printf(`{"cniVersion":"1.1.0","code":50,"msg":"%s: backing daemon is down"}`+"\n", self)
			os.Exit(1)
		}
	case cmd == "ADD":
		fmt.Printf(`{"cniVersion":%q}`+"\n", conf.CNIVersion) // cniplug reads the link from the netns, not the result
	}
}
