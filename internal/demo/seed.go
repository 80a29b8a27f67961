// Package demo holds the demo data set and the short built-in simulation
// that `surge demo` runs against a live node.
package demo

import (
	"context"
	"fmt"

	"github.com/surge-platform/surge/internal/catalog"
	"github.com/surge-platform/surge/internal/member"
)

// Sizes of the demo data set.
const (
	Stores      = 20
	ItemsPerCat = 6
	Users       = 50
	firstStore  = 1001
)

var cities = []string{"Shanghai", "Beijing", "Shenzhen", "Hangzhou", "Chengdu"}

var menu = []struct {
	category string
	items    [ItemsPerCat]string
}{
	{"Coffee", [ItemsPerCat]string{"Americano", "Latte", "Cappuccino", "Flat White", "Mocha", "Cold Brew"}},
	{"Tea", [ItemsPerCat]string{"Jasmine Tea", "Oolong", "Milk Tea", "Matcha Latte", "Lemon Tea", "Peach Oolong"}},
	{"Burgers", [ItemsPerCat]string{"Classic Burger", "Cheese Burger", "Chicken Burger", "Fish Burger", "Double Beef", "Veggie Burger"}},
	{"Snacks", [ItemsPerCat]string{"Fries", "Nuggets", "Onion Rings", "Wings", "Hash Brown", "Corn Cup"}},
	{"Desserts", [ItemsPerCat]string{"Egg Tart", "Sundae", "Apple Pie", "Cheesecake", "Brownie", "Mango Pudding"}},
}

// StoreIDs returns the ids of the demo stores.
func StoreIDs() []int64 {
	out := make([]int64, Stores)
	for i := range out {
		out[i] = int64(firstStore + i)
	}
	return out
}

// Phone returns the phone number of demo user i.
func Phone(i int) string { return fmt.Sprintf("+86138%08d", i) }

// Seed loads the demo data set: 20 stores, each with a 30-item menu in 5
// categories of which 3 items have limited stock (20 to 100), and the demo
// users. Ids are fixed, so seeding twice changes nothing (stock levels of
// existing items are left alone).
func Seed(ctx context.Context, cat *catalog.Service, members *member.Service) error {
	for si, sid := range StoreIDs() {
		if _, err := cat.AdminStore(ctx, sid); err == nil {
			continue // seeded before
		}
		open := true
		if _, err := cat.CreateStore(ctx, sid, catalog.StoreInput{
			Name: fmt.Sprintf("Surge Cafe #%d", si+1), City: cities[si%len(cities)],
			Address: fmt.Sprintf("%d Demo Road", 100+si), Open: &open,
		}); err != nil {
			return fmt.Errorf("seed store %d: %w", sid, err)
		}
		for ci, c := range menu {
			catID := sid*100 + int64(ci)
			if _, err := cat.CreateCategory(ctx, sid, catID, catalog.CategoryInput{Name: c.category, Sort: ci}); err != nil {
				return fmt.Errorf("seed category: %w", err)
			}
			for ii, name := range c.items {
				n := ci*ItemsPerCat + ii
				in := catalog.ItemInput{CategoryID: catID, Name: name, Price: int64(900 + 100*((n*7+si)%25)), Sort: ii}
				if ci == 0 && ii < 3 { // the first three coffees are limited
					stock := int64(20 + (si*37+ii*23)%81)
					in.Limited, in.Stock = true, &stock
				}
				if _, err := cat.PutItem(ctx, sid, sid*1000+int64(n), in); err != nil {
					return fmt.Errorf("seed item: %w", err)
				}
			}
		}
	}
	for i := range Users {
		if _, _, err := members.Login(ctx, Phone(i)); err != nil {
			return fmt.Errorf("seed user: %w", err)
		}
	}
	return nil
}
