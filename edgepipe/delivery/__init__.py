"""What leaves the build: the bundle (writer, atomic output folder, archive), its report and charts,
deployment to devices and fleets, and regression checks on the results a bundle brings back."""
