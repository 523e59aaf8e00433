package main

import "fmt"

func cmdQueue(args []string) int {
	fmt.Println("not implemented yet")
	return 2
}
