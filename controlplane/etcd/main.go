// etcd for kubesim's control plane: the same entry point as upstream's etcd binary (go.etcd.io/etcd/v3's main.go).
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
